"""COCO detection metrics through faster-coco-eval."""

from __future__ import annotations

import contextlib
import io

import numpy as np

STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]


def evaluate_detections(gt: dict, detections: list[dict]) -> dict:
    """gt: COCO instances dict; detections: COCO results (image_id, category_id, bbox xywh, score).

    Returns {"stats": {name: value}, "per_class_ap": {category name: AP}}; AP values are 0..1 and
    -1 where COCO defines none.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: v for k, v in gt.items()}
        coco_gt.dataset.setdefault("info", {})
        coco_gt.createIndex()
        stats = np.full(12, 0.0)
        per_class = {c["name"]: 0.0 for c in gt["categories"]}
        if detections:
            coco_dt = coco_gt.loadRes(detections)
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats = np.asarray(ev.stats[:12], dtype=float)
            precision = ev.eval["precision"]  # T x R x K x A x M
            for k, cat_id in enumerate(ev.params.catIds):
                p = precision[:, :, k, 0, -1]
                name = coco_gt.cats[cat_id]["name"]
                per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return {"stats": dict(zip(STAT_NAMES, map(float, stats))), "per_class_ap": per_class}
