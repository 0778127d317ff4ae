"""Validation during training: the one evaluation loop (cvpipe.evaluation.engine) with a torch predictor.

Only `TorchPredictor` is training's own: it letterboxes the pixels the engine read (cvpipe.vision, as the
service does), runs the torch model and post-processes with cvpipe.vision.postprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cvpipe.data.schema import DetectionDataset
from cvpipe.evaluation.engine import evaluate
from cvpipe.vision import ClassMap, Detections, letterbox, postprocess

SCORE_THR = 0.001  # low: COCO AP wants the whole precision-recall curve
NMS_THR = 0.65


class TorchPredictor:
    """predict_batch for the evaluation engine: BGR images -> Detections in original pixels."""

    def __init__(self, model: nn.Module, img_size: int, device: torch.device, score_thr: float = SCORE_THR,
                 nms_thr: float = NMS_THR):
        self.model, self.size, self.device = model, (img_size, img_size), device
        self.score_thr, self.nms_thr = score_thr, nms_thr

    def inputs(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[float]]:
        """The network input [B, 3, S, S] float32 (letterboxed, BGR 0..255) and each image's scale."""
        boxed = [letterbox(image, self.size) for image in images]
        return torch.stack([torch.from_numpy(chw) for chw, _ in boxed]), [scale for _, scale in boxed]

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        batch, scales = self.inputs(images)
        decoded = self.model(batch.to(self.device)).float().cpu().numpy()
        out = []
        for image, pred, scale in zip(images, decoded, scales):
            pred = pred[np.isfinite(pred).all(1)]  # an unstable model can overflow exp(w, h)
            out.append(postprocess(pred, scale, self.score_thr, self.nms_thr, image_size=image.shape[:2]))
        return out


def dataset_classmap(ds: DetectionDataset) -> ClassMap:
    label_to_cat = ds.label_to_category_id()
    return ClassMap.from_names(ds.class_names, [label_to_cat[i] for i in range(len(ds.class_names))])


def evaluate_model(model: nn.Module, ds: DetectionDataset, images_dir: Path, img_size: int, device: torch.device,
                   batch_size: int = 8) -> dict[str, float]:
    """COCO stats (AP, AP50, ...) of `model` on `ds` (AP 0 when the model finds nothing)."""
    was_training = model.training
    model.eval()
    try:
        evaluation, _ = evaluate(TorchPredictor(model, img_size, device), ds.to_coco(), images_dir,
                                 dataset_classmap(ds), batch_size, desc="validating")
    finally:
        model.train(was_training)
    return evaluation.stats
