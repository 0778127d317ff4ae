"""YOLOX's learning-rate schedule ("yoloxwarmcos"): quadratic warm-up, cosine decay, flat tail.

    iteration < warmup:                 lr = (base - start) * (it / warmup)^2 + start
    warmup <= it < total - no_aug:      lr = min + (base - min) * (1 + cos(pi * progress)) / 2
    last no_aug iterations:             lr = min          (min = base * min_lr_ratio)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmCosineLR:
    base_lr: float
    iters_per_epoch: int
    epochs: int
    warmup_epochs: float = 1.0
    no_aug_epochs: int = 0
    min_lr_ratio: float = 0.05
    warmup_lr_start: float = 0.0

    def __post_init__(self):
        if self.iters_per_epoch < 1 or self.epochs < 1:
            raise ValueError("need at least one epoch of at least one iteration, "
                             f"got {self.epochs} x {self.iters_per_epoch}")

    @property
    def total_iters(self) -> int:
        return self.iters_per_epoch * self.epochs

    @property
    def warmup_iters(self) -> int:
        return min(int(round(self.iters_per_epoch * self.warmup_epochs)), self.total_iters)

    @property
    def no_aug_iters(self) -> int:
        return self.iters_per_epoch * min(self.no_aug_epochs, self.epochs)

    def __call__(self, iteration: int) -> float:
        """lr for the 0-based optimizer step `iteration`."""
        base, min_lr = self.base_lr, self.base_lr * self.min_lr_ratio
        warm = self.warmup_iters
        if iteration < warm:
            return (base - self.warmup_lr_start) * (iteration / warm) ** 2 + self.warmup_lr_start
        cos_iters = self.total_iters - warm - self.no_aug_iters
        if cos_iters <= 0 or iteration >= warm + cos_iters:
            return min_lr
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (iteration - warm) / cos_iters))
