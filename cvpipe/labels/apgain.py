"""The AP a fix is estimated to buy: how much the dataset's mean AP@[.5:.95] of the out-of-fold predictions
changes when the entry's fix is applied to the labels (and nothing else). A label error both misleads training
and distorts the measured AP; this measures the second directly, with the model that found it.

AP per class is COCO-style (101-point interpolated precision, IoU thresholds 0.50:0.05:0.95) with one
vectorised matching rule: a prediction is a true positive when its best same-class label has IoU >= t and it is
that label's highest-scoring such prediction. COCO's greedy matching differs only where boxes crowd together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .boxes import BoxTable, image_pairs, pair_iou, segment_argmax, segment_max

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def class_ap(labels: BoxTable, preds: BoxTable) -> float:
    """AP@[.5:.95] of one class's predictions against its labels (NaN when it has no label)."""
    if len(labels) == 0:
        return float("nan")
    if len(preds) == 0:
        return 0.0
    ip, il = image_pairs(preds, labels)
    if not len(ip):
        return 0.0
    iou = pair_iou(preds.xyxy[ip], labels.xyxy[il])
    best = segment_max(iou, ip, len(preds))
    pick = segment_argmax(iou, ip, len(preds))
    target = np.where(pick >= 0, il[np.maximum(pick, 0)], -1)
    order = np.argsort(-preds.score, kind="stable")
    aps = []
    for t in IOU_THRESHOLDS:
        ok = (best >= t) & (target >= 0)
        first = np.zeros(len(preds), bool)  # the highest-scoring prediction per matched label wins it
        cand = order[ok[order]]
        _, idx = np.unique(target[cand], return_index=True)
        first[cand[idx]] = True
        tp = first[order]
        aps.append(_interpolated_ap(np.cumsum(tp), np.arange(1, len(tp) + 1), len(labels)))
    return float(np.mean(aps))


def _interpolated_ap(tp_cum: np.ndarray, det_cum: np.ndarray, positives: int) -> float:
    recall = tp_cum / positives
    precision = tp_cum / det_cum
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at >= this recall
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def _of_class(table: BoxTable, label: int) -> BoxTable:
    return table.take(np.flatnonzero(table.label == label))


def _fixed(labels: BoxTable, entry: pd.Series) -> BoxTable:
    """The labels with this entry's fix applied."""
    kind, ann = entry["type"], int(entry["ann_id"])
    keep = labels.ann_id != ann
    if kind in ("spurious", "duplicate"):
        return labels.take(np.flatnonzero(keep))
    new_box = np.array([[entry["px1"], entry["py1"], entry["px2"], entry["py2"]]], np.float64)
    if kind == "wrong_class":
        new_box = labels.xyxy[labels.ann_id == ann]
    rows = np.flatnonzero(keep)
    return BoxTable.build(np.r_[labels.image_id[rows], int(entry["image_id"])],
                          np.r_[labels.label[rows], int(entry["proposal_label"])],
                          np.concatenate([labels.xyxy[rows], new_box]), None, np.r_[labels.ann_id[rows], ann])


def estimate_gains(queue: pd.DataFrame, labels: BoxTable, preds: BoxTable, limit: int = 200) -> np.ndarray:
    """Per entry (the first `limit`; NaN after), the change of mean AP (in AP points, 0-100) its fix makes."""
    gains = np.full(len(queue), np.nan)
    classes = np.unique(labels.label)
    if not len(classes):
        return gains
    by_class = {int(c): (_of_class(labels, int(c)), _of_class(preds, int(c))) for c in classes}
    before = {c: class_ap(*lp) for c, lp in by_class.items()}
    for i, entry in enumerate(queue.head(limit).to_dict("records")):
        touched = {int(x) for x in (entry["label"], entry["proposal_label"]) if int(x) >= 0}
        fixed = _fixed(labels, pd.Series(entry))
        delta = 0.0
        for c in touched:
            after = class_ap(_of_class(fixed, c), by_class.get(c, (None, _of_class(preds, c)))[1])
            old = before.get(c, float("nan"))
            delta += (0.0 if np.isnan(after) else after) - (0.0 if np.isnan(old) else old)
        gains[i] = 100.0 * delta / len(classes)
    return gains


def mean_ap(labels: BoxTable, preds: BoxTable) -> float:
    """Mean over the classes that have labels of `class_ap` (AP@[.5:.95]), 0-100."""
    aps = [class_ap(_of_class(labels, int(c)), _of_class(preds, int(c))) for c in np.unique(labels.label)]
    return 100.0 * float(np.mean(aps)) if aps else float("nan")
