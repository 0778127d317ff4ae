"""COCO results JSON (the detection list pycocotools' loadRes and faster-coco-eval take)."""

from __future__ import annotations

from .classmap import ClassMap
from .yolox_decode import Detections


def detections_to_coco(image_id: int, det: Detections, classes: ClassMap, decimals: int = 3) -> list[dict]:
    """One image's detections -> [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]."""
    out = []
    for (x1, y1, x2, y2), score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        out.append({"image_id": int(image_id), "category_id": classes.category_id(label),
                    "bbox": [round(x1, decimals), round(y1, decimals), round(x2 - x1, decimals),
                             round(y2 - y1, decimals)],
                    "score": round(float(score), 6)})
    return out
