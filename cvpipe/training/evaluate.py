"""Validation during training: model -> COCO results with the dataset's original category ids -> COCO AP."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvpipe.data.schema import DetectionDataset
from cvpipe.evaluation.coco import evaluate_detections
from cvpipe.vision import letterbox, postprocess

from .dataset import read_image

log = logging.getLogger(__name__)

SCORE_THR = 0.001  # low: COCO AP wants the whole precision-recall curve
NMS_THR = 0.65


@torch.no_grad()
def predict_coco(model: nn.Module, ds: DetectionDataset, images_dir: Path, img_size: int, device: torch.device,
                 batch_size: int = 8, score_thr: float = SCORE_THR, nms_thr: float = NMS_THR) -> list[dict]:
    """COCO results (image_id, category_id, bbox xywh in original pixels, score) of `model` on every image of `ds`."""
    label_to_cat = ds.label_to_category_id()
    was_training = model.training
    model.eval()
    rows = list(ds.images.sort_values("image_id").itertuples())
    results: list[dict] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            inputs, scales, sizes = [], [], []
            for r in chunk:
                image = read_image(Path(images_dir) / (r.blob or r.file_name))
                chw, scale = letterbox(image, (img_size, img_size))
                inputs.append(torch.from_numpy(chw))
                scales.append(scale)
                sizes.append(image.shape[:2])
            decoded = model(torch.stack(inputs).to(device)).float().cpu().numpy()
            for r, pred, scale, size in zip(chunk, decoded, scales, sizes):
                pred = pred[np.isfinite(pred).all(1)]  # an unstable model can overflow exp(w, h)
                det = postprocess(pred, scale, score_thr, nms_thr, image_size=size)
                for (x1, y1, x2, y2), score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
                    if label not in label_to_cat:
                        continue
                    results.append({"image_id": int(r.image_id), "category_id": label_to_cat[label],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    finally:
        model.train(was_training)
    return results


def evaluate_model(model: nn.Module, ds: DetectionDataset, images_dir: Path, img_size: int, device: torch.device,
                   batch_size: int = 8) -> dict[str, float]:
    """COCO stats (AP, AP50, ...) of `model` on `ds`; AP 0 when the model finds nothing."""
    results = predict_coco(model, ds, images_dir, img_size, device, batch_size)
    if not results:
        log.info("validation: no detections above %.3f", SCORE_THR)
        return {"AP": 0.0, "AP50": 0.0}
    return evaluate_detections(ds.to_coco(), results)["stats"]
