"""Matching detections: IoU of boxes, and whether a prediction equals a reference prediction (used by
model_test over REST and by the service's own check before it swaps to a new model). numpy only."""

from __future__ import annotations

import numpy as np

from cvpipe.vision.boxes import box_iou


def match_detections(pred: list[dict], ref: list[dict], min_iou: float = 0.99,
                     score_tol: float = 1e-3) -> tuple[bool, str]:
    """Same number of boxes, and a one-to-one pairing (same class, best IoU, highest reference score first)
    where every pair has IoU >= min_iou and |score difference| <= score_tol."""
    if len(pred) != len(ref):
        return False, f"{len(pred)} detections, the reference has {len(ref)}"
    if not ref:
        return True, "no detections, as in the reference"
    pb = np.array([d["box"] for d in pred], dtype=float)
    rb = np.array([d["box"] for d in ref], dtype=float)
    iou = box_iou(rb, pb)
    used = np.zeros(len(pred), bool)
    worst_iou, worst_ds = 1.0, 0.0
    for i in np.argsort([-d["score"] for d in ref], kind="stable"):
        same = np.array([p["category_id"] == ref[i]["category_id"] for p in pred]) & ~used
        if not same.any():
            return False, f"reference box {i} ({ref[i].get('category_name', ref[i]['category_id'])}) has no " \
                          f"prediction of its class left"
        j = int(np.argmax(np.where(same, iou[i], -1.0)))
        used[j] = True
        ds = abs(float(pred[j]["score"]) - float(ref[i]["score"]))
        worst_iou, worst_ds = min(worst_iou, float(iou[i, j])), max(worst_ds, ds)
        if iou[i, j] < min_iou or ds > score_tol:
            return False, (f"reference box {i} ({ref[i].get('category_name', ref[i]['category_id'])}) best match "
                           f"IoU {iou[i, j]:.4f} (min {min_iou}), score diff {ds:.2e} (max {score_tol})")
    return True, f"{len(ref)} boxes match: min IoU {worst_iou:.5f}, max score diff {worst_ds:.2e}"


def detection_f1(pred: list[dict], ref: list[dict], min_iou: float = 0.5) -> float:
    """Box-matching F1 of two detection lists (how far two models agree on one image): greedy one-to-one
    pairing, same class, IoU >= min_iou, highest reference score first. Both empty: 1.0 (full agreement)."""
    if not pred and not ref:
        return 1.0
    return 2.0 * matched_boxes(pred, ref, min_iou) / (len(pred) + len(ref))


def detection_recall(pred: list[dict], ref: list[dict], min_iou: float = 0.5) -> float:
    """Share of the reference's boxes that `pred` finds (same pairing as detection_f1); 1.0 for no reference."""
    return matched_boxes(pred, ref, min_iou) / len(ref) if ref else 1.0


def matched_boxes(pred: list[dict], ref: list[dict], min_iou: float = 0.5) -> int:
    """Pairs of a greedy one-to-one pairing: same class, IoU >= min_iou, highest reference score first."""
    if not pred or not ref:
        return 0
    iou = box_iou(np.array([d["box"] for d in ref], dtype=float), np.array([d["box"] for d in pred], dtype=float))
    used = np.zeros(len(pred), bool)
    pred_cls = np.array([p["category_id"] for p in pred])
    matched = 0
    for i in np.argsort([-d["score"] for d in ref], kind="stable"):
        ok = (pred_cls == ref[i]["category_id"]) & ~used & (iou[i] >= min_iou)
        if ok.any():
            used[int(np.argmax(np.where(ok, iou[i], -1.0)))] = True
            matched += 1
    return matched
