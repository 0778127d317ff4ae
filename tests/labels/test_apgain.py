"""The AP behind the gain estimate equals COCO's where boxes do not crowd, and a real fix buys AP."""

from __future__ import annotations

import numpy as np
from conftest import grid_labels

from cvpipe.evaluation.coco import coco_evaluate
from cvpipe.labels.apgain import class_ap, estimate_gains
from cvpipe.labels.boxes import BoxTable
from cvpipe.labels.score import score_labels


def _noisy_model(labels: BoxTable, seed: int) -> BoxTable:
    """Each label found with a jittered box and a random score, plus false positives."""
    rng = np.random.default_rng(seed)
    keep = rng.uniform(size=len(labels)) < 0.8
    jitter = labels.xyxy[keep] + rng.normal(0, 4, (keep.sum(), 4))
    fp_img = rng.choice(np.unique(labels.image_id), 30)
    fp = np.tile([[250.0, 400.0, 290.0, 440.0]], (30, 1)) + rng.normal(0, 3, (30, 4))
    return BoxTable.build(np.r_[labels.image_id[keep], fp_img], np.r_[labels.label[keep], np.zeros(30, np.int64)],
                          np.concatenate([jitter, fp]), rng.uniform(0.05, 1, keep.sum() + 30))


def _coco(labels: BoxTable, preds: BoxTable) -> tuple[dict, list[dict]]:
    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gt = {"images": [{"id": int(i), "width": 640, "height": 480} for i in np.unique(labels.image_id)],
          "annotations": [{"id": k + 1, "image_id": int(i), "category_id": int(c) + 1, "bbox": xywh(b),
                           "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
                          for k, (i, c, b) in enumerate(zip(labels.image_id, labels.label, labels.xyxy))],
          "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(4)]}
    dets = [{"image_id": int(i), "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
            for i, c, b, s in zip(preds.image_id, preds.label, preds.xyxy, preds.score)]
    return gt, dets


def test_class_ap_equals_coco_on_uncrowded_boxes():
    labels = grid_labels(images=30, seed=5)
    preds = _noisy_model(labels, 6)
    ev = coco_evaluate(*_coco(labels, preds))
    for c in range(4):
        mine = class_ap(labels.take(np.flatnonzero(labels.label == c)), preds.take(np.flatnonzero(preds.label == c)))
        assert abs(mine - ev.per_class_ap[f"c{c}"]) < 0.01, (c, mine, ev.per_class_ap[f"c{c}"])


def test_fixing_a_planted_error_is_estimated_to_buy_ap():
    clean = grid_labels(images=30, seed=7)
    preds = BoxTable.build(clean.image_id, clean.label, clean.xyxy, np.linspace(0.5, 0.95, len(clean)))
    flipped = clean.label.copy()
    flipped[0] = (flipped[0] + 1) % 4
    noisy = BoxTable.build(clean.image_id, flipped, clean.xyxy, None, clean.ann_id)
    queue = score_labels(noisy, preds)["wrong_class"]
    gains = estimate_gains(queue, noisy, preds)
    assert queue["ann_id"].iloc[0] == clean.ann_id[0] and gains[0] > 0
