"""Decoupled YOLOX head: per level a 1x1 stem, two conv towers (cls / reg), and 1x1 predictors.

Output layout per anchor point: (dx, dy, log w, log h, obj, C class scores), anchor points ordered level by level
(strides 8, 16, 32), row-major within a level -- the layout of Megvii's ONNX export.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .blocks import ConvBNAct, make_conv
from .loss import yolox_loss

STRIDES = (8, 16, 32)
PRIOR_PROB = 0.01


def make_grid(level_hw: list[tuple[int, int]], strides=STRIDES, device=None, dtype=torch.float32):
    """Anchor points (N x 2, cell x/y) and their strides (N,) for the given per-level feature sizes."""
    grids, expanded = [], []
    for (h, w), s in zip(level_hw, strides):
        yv, xv = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        grids.append(torch.stack((xv, yv), -1).reshape(-1, 2))
        expanded.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(grids).to(dtype), torch.cat(expanded).to(dtype)


class YOLOXHead(nn.Module):
    def __init__(self, num_classes: int, width: float, depthwise: bool = False, fused: bool = False,
                 in_channels=(256, 512, 1024), strides=STRIDES):
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.decode_in_inference = True  # False -> raw outputs (export layout)
        self.use_l1 = False  # True in the last no-augmentation epochs
        feat = int(256 * width)

        def tower() -> nn.Sequential:
            return nn.Sequential(make_conv(feat, feat, 3, 1, depthwise, fused),
                                 make_conv(feat, feat, 3, 1, depthwise, fused))

        self.stems = nn.ModuleList(ConvBNAct(int(c * width), feat, 1, fused=fused) for c in in_channels)
        self.cls_convs = nn.ModuleList(tower() for _ in in_channels)
        self.reg_convs = nn.ModuleList(tower() for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(feat, num_classes, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(feat, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(feat, 1, 1) for _ in in_channels)
        self.initialize_biases(PRIOR_PROB)

    def initialize_biases(self, prior_prob: float = PRIOR_PROB, which=("cls_preds", "obj_preds")) -> None:
        """Start cls/obj scores at `prior_prob` so the many negatives do not swamp early training."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        for name in which:
            for conv in getattr(self, name):
                nn.init.constant_(conv.bias, bias)

    def reset_cls_preds(self, num_classes: int) -> None:
        """Replace the class predictors for a new class count (fresh init, prior-prob bias)."""
        self.num_classes = num_classes
        for i, conv in enumerate(cast(list[nn.Conv2d], self.cls_preds)):
            self.cls_preds[i] = nn.Conv2d(conv.in_channels, num_classes, 1).to(conv.weight.device)
        self.initialize_biases(PRIOR_PROB, which=("cls_preds",))

    def forward_logits(self, feats) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Per-anchor logits [B, N, 5+C] (reg raw, obj logit, cls logits) and the per-level feature sizes."""
        outs, level_hw = [], []
        for k, x in enumerate(feats):
            # order as Megvii's forward (stem, cls tower, cls pred, reg tower, reg pred, obj pred):
            # ONNX import relies on it
            x = self.stems[k](x)
            cls_out = self.cls_preds[k](self.cls_convs[k](x))
            reg_feat = self.reg_convs[k](x)
            out = torch.cat([self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat), cls_out], 1)
            level_hw.append((out.shape[2], out.shape[3]))
            outs.append(out.flatten(2))
        return torch.cat(outs, 2).permute(0, 2, 1), level_hw

    def forward(self, feats, targets: torch.Tensor | None = None):
        logits, level_hw = self.forward_logits(feats)
        grid, stride = make_grid(level_hw, self.strides, logits.device, logits.dtype)
        if targets is not None:
            return yolox_loss(logits, grid, stride, targets, self.num_classes, self.use_l1)
        raw = torch.cat([logits[..., :4], logits[..., 4:].sigmoid()], -1)
        if not self.decode_in_inference:
            return raw
        return decode_outputs(raw, grid, stride)


def decode_outputs(raw: torch.Tensor, grid: torch.Tensor, stride: torch.Tensor) -> torch.Tensor:
    """Raw [B, N, 5+C] -> (cx, cy, w, h) in input pixels, scores untouched."""
    s = stride[:, None]
    return torch.cat([(raw[..., :2] + grid) * s, torch.exp(raw[..., 2:4]) * s, raw[..., 4:]], -1)
