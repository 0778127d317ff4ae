"""Validation during training: the one evaluation loop (cvpipe.evaluation.engine) with the one torch predictor
(cvpipe.inference.torch_predictor: cvpipe.vision letterbox, decode and NMS, as the service)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cvpipe.data.schema import DetectionDataset
from cvpipe.evaluation.engine import evaluate
from cvpipe.inference.torch_predictor import TorchPredictor
from cvpipe.vision import ClassMap

SCORE_THR = 0.001  # low: COCO AP wants the whole precision-recall curve
NMS_THR = 0.65


def dataset_classmap(ds: DetectionDataset) -> ClassMap:
    label_to_cat = ds.label_to_category_id()
    return ClassMap.from_names(ds.class_names, [label_to_cat[i] for i in range(len(ds.class_names))])


def evaluate_model(model: nn.Module, ds: DetectionDataset, images_dir: Path, img_size: int, device: torch.device,
                   batch_size: int = 8) -> dict[str, float]:
    """COCO stats (AP, AP50, ...) of `model` on `ds` (AP 0 when the model finds nothing)."""
    was_training = model.training
    model.eval()
    try:
        predictor = TorchPredictor(model, (img_size, img_size), SCORE_THR, NMS_THR, device=device)
        evaluation, _ = evaluate(predictor, ds.to_coco(), images_dir, dataset_classmap(ds), batch_size,
                                 desc="validating")
    finally:
        model.train(was_training)
    return evaluation.stats
