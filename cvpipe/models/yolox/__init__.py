"""YOLOX in plain PyTorch (no torchvision / mmcv), weight-compatible with Megvii's and mmdetection's checkpoints.

    model = build_yolox("s", num_classes=80)
    load_checkpoint(model, resolve_weights(DEFAULT_WEIGHTS["s"]))   # mmdetection / Megvii / cvpipe layouts
    model.eval(); preds = model(images)                               # [B, N, 5+C] decoded
    losses = model.train()(images, targets)                           # dict with "total_loss"
"""

from .checkpoints import CheckpointError, LoadResult, load_checkpoint, load_model, save_checkpoint
from .model import SCALES, YOLOX, build_yolox, fuse_model, recalibrate_bn, unfuse_model
from .weights import DEFAULT_WEIGHTS, WeightsUnavailable, resolve_weights

__all__ = ["SCALES", "YOLOX", "build_yolox", "fuse_model", "unfuse_model", "recalibrate_bn",
           "load_checkpoint", "save_checkpoint", "load_model", "CheckpointError", "LoadResult",
           "resolve_weights", "DEFAULT_WEIGHTS", "WeightsUnavailable"]
