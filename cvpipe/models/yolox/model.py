"""The YOLOX detector and its standard scales."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import BN_EPS, BN_MOMENTUM, ConvBNAct
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
            mod.conv.bias.copy_(bn.bias - bn.running_mean * scale)
        elif isinstance(mod, nn.Conv2d) and name.startswith("head.") and name.split(".")[1].endswith("preds"):
            mod.weight.copy_(src[name].weight)
            mod.bias.copy_(src[name].bias)
    return fused.eval()


def set_bn_hyperparams(model: nn.Module, eps: float = BN_EPS, momentum: float = BN_MOMENTUM) -> None:
    """YOLOX's BN settings on every BatchNorm (useful after replacing modules)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = eps, momentum


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


@torch.no_grad()
def unfuse_model(fused: YOLOX, calibration_batches=None) -> YOLOX:
    """A trainable (BatchNorm) model computing the same function as a fused one, e.g. the nano ONNX weights.

    Each BN is set so that, in eval mode, BN(conv(x)) == conv(x) + fused bias exactly. Without calibration the
    BN stats are neutral (mean 0, var 1 - eps). With `calibration_batches` (image tensors) the running stats
    are the real per-channel statistics of each conv's output and gamma/beta undo them, so train mode (batch
    statistics) also starts close to the fused function -- the better start for fine-tuning.
    """
    if not fused.fused:
        raise ValueError("model is not fused")
    model = build_yolox(fused.scale, fused.num_classes).to(next(fused.parameters()).device)
    model.head.decode_in_inference = fused.head.decode_in_inference
    blocks = {name: m for name, m in fused.named_modules() if isinstance(m, ConvBNAct)}
    stats: dict[str, list] = {name: [0, 0.0, 0.0] for name in blocks}  # count, sum, sum of squares

    if calibration_batches is not None:
        def record(name):
            def hook(conv, inputs, out):
                y = (out - conv.bias[None, :, None, None]).double()
                s = stats[name]
                s[0] += y.numel() // y.shape[1]
                s[1] = s[1] + y.sum((0, 2, 3))
                s[2] = s[2] + (y * y).sum((0, 2, 3))
            return hook

        hooks = [m.conv.register_forward_hook(record(name)) for name, m in blocks.items()]
        was_training = fused.training
        fused.eval()
        try:
            for images in calibration_batches:
                fused(images)
        finally:
            for h in hooks:
                h.remove()
            fused.train(was_training)

    target = dict(model.named_modules())
    for name, src in blocks.items():
        conv, bn = target[name].conv, target[name].bn
        conv.weight.copy_(src.conv.weight)
        count, total, squares = stats[name]
        if count > 1:
            mean = (total / count).float()
            var = ((squares - total * total / count) / (count - 1)).clamp(min=0).float()
        else:
            mean, var = torch.zeros_like(bn.running_mean), torch.full_like(bn.running_var, 1 - bn.eps)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + src.conv.bias)
    for name, mod in fused.named_modules():
        if isinstance(mod, nn.Conv2d) and name.split(".")[1:2] and name.split(".")[1].endswith("preds"):
            target[name].weight.copy_(mod.weight)
            target[name].bias.copy_(mod.bias)
    return model.eval()
