"""The YOLOX detector and its standard scales."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .blocks import ConvBNAct
from .head import YOLOXHead
from .neck import YOLOPAFPN


@dataclass(frozen=True)
class Scale:
    depth: float
    width: float
    depthwise: bool = False
    input_size: int = 640  # the size the official weights were trained/evaluated at


SCALES: dict[str, Scale] = {
    "nano": Scale(0.33, 0.25, depthwise=True, input_size=416),
    "tiny": Scale(0.33, 0.375, input_size=416),
    "s": Scale(0.33, 0.50),
    "m": Scale(0.67, 0.75),
    "l": Scale(1.0, 1.0),
    "x": Scale(1.33, 1.25),
}


class YOLOX(nn.Module):
    """backbone (PAFPN with CSPDarknet inside) + decoupled head; state_dict keys equal Megvii's.

    forward(images) -> decoded [B, N, 5+C] (cx, cy, w, h in input px, obj, class probs), or raw outputs when
    head.decode_in_inference is False; forward(images, targets) -> dict of losses.
    images: float [B, 3, H, W] BGR 0..255, H and W multiples of 32.
    """

    def __init__(self, scale: str, num_classes: int = 80, fused: bool = False):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"unknown YOLOX scale {scale!r}; choose one of {list(SCALES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = SCALES[scale]
        self.scale = scale
        self.fused = fused
        self.backbone = YOLOPAFPN(cfg.depth, cfg.width, cfg.depthwise, fused)
        self.head = YOLOXHead(num_classes, cfg.width, cfg.depthwise, fused)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[2:])}")
        return self.head(self.backbone(images), targets)


def build_yolox(scale: str, num_classes: int = 80, fused: bool = False) -> YOLOX:
    """A freshly initialised YOLOX of a standard scale (nano, tiny, s, m, l, x).

    fused=True builds the deploy form (conv biases, no BatchNorm) used to hold BN-folded weights, e.g. the
    nano ONNX; it cannot be trained meaningfully and loads only fused weights.
    """
    return YOLOX(scale, num_classes, fused)


@torch.no_grad()
def fuse_model(model: YOLOX) -> YOLOX:
    """A fused copy of `model` (BN folded into the preceding conv), same outputs in eval mode."""
    if model.fused:
        raise ValueError("model is already fused")
    fused = build_yolox(model.scale, model.num_classes, fused=True).to(next(model.parameters()).device)
    fused.head.decode_in_inference = model.head.decode_in_inference
    src = dict(model.named_modules())
    for name, mod in fused.named_modules():
        if isinstance(mod, ConvBNAct):
            conv, bn = src[name].conv, src[name].bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            mod.conv.weight.copy_(conv.weight * scale[:, None, None, None])
            cast(torch.Tensor, mod.conv.bias).copy_(bn.bias - bn.running_mean * scale)
        elif isinstance(mod, nn.Conv2d) and name.startswith("head.") and name.split(".")[1].endswith("preds"):
            mod.weight.copy_(src[name].weight)
            cast(torch.Tensor, mod.bias).copy_(src[name].bias)
    return fused.eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over `batches` (image tensors).

    After short or high-learning-rate training the momentum-0.03 running stats lag the weights; this
    makes eval mode match what the weights were trained with. Leaves the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    try:
        for images in batches:
            model(images)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        model.eval()


class _CalibrationStats:
    """Per ConvBNAct block of a fused model: moments of its conv output (bias removed) and of its input."""

    def __init__(self, blocks: dict[str, ConvBNAct]):
        # count per channel, sum, sum of squares (the sums become per-channel tensors once a batch has run)
        self.out: dict[str, list[Any]] = {name: [0, 0.0, 0.0] for name in blocks}
        # count, sum, sum of squares (all channels)
        self.inp: dict[str, list[Any]] = {name: [0, 0.0, 0.0] for name in blocks}
        self.hooks = [m.conv.register_forward_hook(self._hook(name)) for name, m in blocks.items()]

    def _hook(self, name: str):
        def hook(conv, inputs, out):
            y = (out - conv.bias[None, :, None, None]).double()
            s = self.out[name]
            s[0] += y.numel() // y.shape[1]
            s[1] = s[1] + y.sum((0, 2, 3))
            s[2] = s[2] + (y * y).sum((0, 2, 3))
            x = inputs[0].double()
            t = self.inp[name]
            t[0] += x.numel()
            t[1] += float(x.sum())
            t[2] += float((x * x).sum())
        return hook

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def output_moments(self, name: str, like: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        count, total, squares = self.out[name]
        if count <= 1:  # no calibration: neutral statistics
            return torch.zeros_like(like), torch.full_like(like, 1 - eps)
        mean = (total / count).float()
        return mean, ((squares - total * total / count) / (count - 1)).clamp(min=0).float()

    def input_std(self, name: str) -> float:
        count, total, squares = self.inp[name]
        if count <= 1:
            return 1.0
        return max((squares / count - (total / count) ** 2) ** 0.5, 1e-6)


def _collect_stats(fused: YOLOX, blocks: dict[str, ConvBNAct], batches) -> _CalibrationStats:
    stats = _CalibrationStats(blocks)
    was_training = fused.training
    fused.eval()
    try:
        for images in batches or ():
            fused(images)
    finally:
        stats.remove()
        fused.train(was_training)
    return stats


def _row_factors(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel, the factor that brings its weight row to the layer's RMS row norm (1 for empty rows)."""
    norms = weight.flatten(1).norm(dim=1)
    target = norms.pow(2).mean().sqrt()
    return torch.where(norms > 0, target / norms.clamp(min=1e-12), torch.ones_like(norms))


@torch.no_grad()
def unfuse_model(fused: YOLOX, calibration_batches=None, normalise_inputs: bool = True,
                 equalise_rows: bool = True) -> YOLOX:
    """A trainable (BatchNorm) model computing the same function as a fused one, e.g. the nano ONNX weights.

    Each BN is set so that, in eval mode, BN(conv(x)) == conv(x) + fused bias (up to float rounding). Without
    calibration the BN stats are neutral (mean 0, var 1 - eps). With `calibration_batches` (image tensors) the
    running stats are the real per-channel statistics of each conv's output and gamma/beta undo them, so train
    mode (batch statistics) also starts close to the fused function -- the better start for fine-tuning.

    `normalise_inputs` (with calibration): each conv's weights are multiplied by the standard deviation of its
    input (the BN after it absorbs the factor, so the function is unchanged). Why: a conv followed by BN is
    scale-invariant, so one SGD step changes it by lr * |g| / |W| ~ lr / |W|^2 relative to itself. Folding BN
    divided every weight by its output's batch std; for the stem, which sees raw 0-255 pixels (std ~ 60), that
    left weights ~60x too small, and its relative update was ~250x that of any other tensor (1.24 vs <= 5e-3 at
    lr 0.00125): one step wrecked the stem. Scaled by the input std, every conv's weights are those of a conv on
    unit-variance inputs, and the stem's relative update falls in line with the rest.

    `equalise_rows`: BN normalises each output channel on its own, so each *row* of a conv is scale-invariant
    and moves by ~ lr / |row|^2. Folding left rows of very different norms (the nano stem: a row of 0.02 beside
    rows of ~8, whose channel's BN gamma was small); at the COCO example's LR that row moved by 0.93 of itself
    per step and the first epoch halved the AP (issue 21). Every row is brought to the layer's RMS row norm (its
    BN absorbs the factor, as above): the largest per-row update falls from 0.93 to 5e-3.
    """
    if not fused.fused:
        raise ValueError("model is not fused")
    model = build_yolox(fused.scale, fused.num_classes).to(next(fused.parameters()).device)
    model.head.decode_in_inference = fused.head.decode_in_inference
    blocks = {name: m for name, m in fused.named_modules() if isinstance(m, ConvBNAct)}
    stats = _collect_stats(fused, blocks, calibration_batches)
    target = dict(model.named_modules())
    for name, src in blocks.items():
        conv, bn = target[name].conv, target[name].bn
        mean, var = stats.output_moments(name, bn.running_mean, bn.eps)
        std = stats.input_std(name) if normalise_inputs else 1.0
        c = std * _row_factors(src.conv.weight * std) if equalise_rows else torch.full_like(mean, std)
        # per output channel: BN'(c y) with mean' = c m, var' = c^2 v, gamma' = sqrt(c^2 v + eps) / c,
        # beta' = m + b  equals  y + b
        conv.weight.copy_(src.conv.weight * c[:, None, None, None])
        bn.running_mean.copy_(mean * c)
        bn.running_var.copy_(var * c * c)
        bn.weight.copy_(torch.sqrt(var * c * c + bn.eps) / c)
        bn.bias.copy_(mean + cast(torch.Tensor, src.conv.bias))
    for name, mod in fused.named_modules():
        if isinstance(mod, nn.Conv2d) and name.split(".")[1:2] and name.split(".")[1].endswith("preds"):
            target[name].weight.copy_(mod.weight)
            target[name].bias.copy_(mod.bias)
    return model.eval()
