"""YOLOX training: data loading and augmentation, the training loop (EMA, warm-up + cosine LR, resume, DDP),
validation and curves. The model_train step (cvpipe.steps.model_train) is a thin wrapper over `run_training`.

Attributes load lazily so that `from cvpipe.training.params import TrainParams` (used by the step's params, read by
`cvpipe --help`) does not import torch / cv2.
"""

from __future__ import annotations

import importlib

_LAZY = {"TrainParams": ".params", "run_training": ".run", "Trainer": ".trainer", "TrainOutputs": ".trainer",
         "TrainResult": ".trainer"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
