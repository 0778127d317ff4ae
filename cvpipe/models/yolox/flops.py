"""FLOPs of a forward pass, counted by torch's FlopCounterMode (convs and matmuls, 2 FLOPs per MAC)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, size: int | tuple[int, int], batch: int = 1) -> int:
    """FLOPs of one eval-mode forward of `model` on a batch of `batch` images of `size` (h, w)."""
    h, w = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(batch, 3, h, w, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
