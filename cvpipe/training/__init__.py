"""YOLOX training: data loading and augmentation, the training loop (EMA, warm-up + cosine LR, resume, DDP),
validation and curves. The model_train step (cvpipe.steps.model_train) is a thin wrapper over `run_training`."""

from .params import TrainParams
from .run import run_training
from .trainer import Trainer, TrainOutputs, TrainResult

__all__ = ["TrainParams", "Trainer", "TrainOutputs", "TrainResult", "run_training"]
