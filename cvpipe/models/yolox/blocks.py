"""YOLOX building blocks. Attribute names follow Megvii's YOLOX so state_dict keys match its checkpoints.

`fused=True` builds the deploy form: each conv carries a bias and the BatchNorm is an identity (what an ONNX
export with folded BN contains).
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm -> SiLU (Megvii's BaseConv: keys conv.*, bn.*)."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1, groups: int = 1, fused: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ksize, stride, padding=(ksize - 1) // 2, groups=groups, bias=fused)
        self.bn = nn.Identity() if fused else nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise kxk conv then pointwise 1x1 conv, each with BN + SiLU (keys dconv.*, pconv.*)."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1, fused: bool = False):
        super().__init__()
        self.dconv = ConvBNAct(cin, cin, ksize, stride, groups=cin, fused=fused)
        self.pconv = ConvBNAct(cin, cout, 1, 1, fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def make_conv(cin: int, cout: int, ksize: int, stride: int = 1, depthwise: bool = False,
              fused: bool = False) -> nn.Module:
    """A 'Conv' slot of YOLOX: DWConv in the depthwise (nano) variant, ConvBNAct otherwise."""
    if depthwise:
        return DWConv(cin, cout, ksize, stride, fused=fused)
    return ConvBNAct(cin, cout, ksize, stride, fused=fused)


class Bottleneck(nn.Module):
    """1x1 conv -> 3x3 conv, with a residual add when shapes allow and shortcut is on."""

    def __init__(self, cin: int, cout: int, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False, fused: bool = False):
        super().__init__()
        hidden = int(cout * expansion)
        self.conv1 = ConvBNAct(cin, hidden, 1, fused=fused)
        self.conv2 = make_conv(hidden, cout, 3, 1, depthwise, fused)
        self.use_add = shortcut and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """CSP block (YOLOv5's C3): two 1x1 branches, bottlenecks on the first, concat, 1x1 fuse."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False, fused: bool = False):
        super().__init__()
        hidden = int(cout * expansion)
        self.conv1 = ConvBNAct(cin, hidden, 1, fused=fused)
        self.conv2 = ConvBNAct(cin, hidden, 1, fused=fused)
        self.conv3 = ConvBNAct(2 * hidden, cout, 1, fused=fused)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, 1.0, depthwise, fused) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # order matters for ONNX import: conv1, conv2, then the bottlenecks (Megvii's graph order)
        x1 = self.conv1(x)
        x2 = self.conv2(x)
        return self.conv3(torch.cat((self.m(x1), x2), dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 conv, max-pools 5/9/13 concatenated with the input, 1x1 conv."""

    def __init__(self, cin: int, cout: int, kernel_sizes=(5, 9, 13), fused: bool = False):
        super().__init__()
        hidden = cin // 2
        self.conv1 = ConvBNAct(cin, hidden, 1, fused=fused)
        self.m = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), cout, 1, fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixel blocks into channels) then a conv; always a plain conv, also in nano."""

    def __init__(self, cin: int, cout: int, ksize: int = 1, stride: int = 1, fused: bool = False):
        super().__init__()
        self.conv = ConvBNAct(cin * 4, cout, ksize, stride, fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channel order as Megvii: top-left, bottom-left, top-right, bottom-right
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1)
        return self.conv(x)
