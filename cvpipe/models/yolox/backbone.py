"""CSPDarknet backbone of YOLOX (Focus stem, 4 stages, SPP in the last); returns dark3/4/5 features."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CSPLayer, Focus, SPPBottleneck, make_conv


class CSPDarknet(nn.Module):
    def __init__(self, depth: float, width: float, depthwise: bool = False, fused: bool = False):
        super().__init__()
        base = int(width * 64)
        n = max(round(depth * 3), 1)
        kw = dict(depthwise=depthwise, fused=fused)
        self.stem = Focus(3, base, ksize=3, fused=fused)
        self.dark2 = nn.Sequential(make_conv(base, base * 2, 3, 2, **kw), CSPLayer(base * 2, base * 2, n, **kw))
        self.dark3 = nn.Sequential(make_conv(base * 2, base * 4, 3, 2, **kw), CSPLayer(base * 4, base * 4, n * 3, **kw))
        self.dark4 = nn.Sequential(make_conv(base * 4, base * 8, 3, 2, **kw), CSPLayer(base * 8, base * 8, n * 3, **kw))
        self.dark5 = nn.Sequential(
            make_conv(base * 8, base * 16, 3, 2, **kw),
            SPPBottleneck(base * 16, base * 16, fused=fused),
            CSPLayer(base * 16, base * 16, n, shortcut=False, **kw),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        c3 = self.dark3(x)
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        return c3, c4, c5
