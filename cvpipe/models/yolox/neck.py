"""PAFPN neck. As in Megvii's YOLOX it owns the backbone (keys backbone.backbone.*, backbone.lateral_conv0.*)."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import CSPDarknet
from .blocks import ConvBNAct, CSPLayer, make_conv

IN_CHANNELS = (256, 512, 1024)


class YOLOPAFPN(nn.Module):
    def __init__(self, depth: float, width: float, depthwise: bool = False, fused: bool = False):
        super().__init__()
        c3, c4, c5 = (int(c * width) for c in IN_CHANNELS)
        n = round(3 * depth)
        kw = dict(depthwise=depthwise, fused=fused)
        self.backbone = CSPDarknet(depth, width, **kw)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        # top-down path
        self.lateral_conv0 = ConvBNAct(c5, c4, 1, fused=fused)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, **kw)
        self.reduce_conv1 = ConvBNAct(c4, c3, 1, fused=fused)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, **kw)
        # bottom-up path
        self.bu_conv2 = make_conv(c3, c3, 3, 2, **kw)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, **kw)
        self.bu_conv1 = make_conv(c4, c4, 3, 2, **kw)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, **kw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2, x1, x0 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0
