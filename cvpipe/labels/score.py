"""The scorer: labels vs out-of-fold predictions -> one ranked queue per error type. numpy only, vectorised
over the whole dataset (every label x prediction pair of an image at once, no loop per image).

Evidence per label (IoU >= `match_iou` with it): the best score of a prediction of its own class (`same`), of
any other class (`other`) and of any class (`any`). Then, per type (each queue's score is in [0, 1]):
- wrong_class: other - same, where another class explains the box better than its own;
- spurious: 1 - any: nothing the model sees is there;
- bad_location: a confident prediction of the label's own class that overlaps it only partly (IoU in
  [loc_min_iou, loc_max_iou)), is closest to this label among the labels of its class and matches no other
  label, minus the support the label has where it is: score * (1 - IoU) - same;
- duplicate: two labels of one image that cover the same thing (same class IoU >= dup_iou, or any class IoU >=
  dup_any_iou); the entry is the one with less support;
- missing: a prediction no label or crowd region covers (max IoU < miss_iou), suppressed by a stronger
  candidate in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .boxes import (
    BoxTable,
    image_pairs,
    pair_ioa,
    pair_iou,
    segment_argmax,
    segment_max,
)

ERROR_TYPES = ("missing", "spurious", "wrong_class", "bad_location", "duplicate")
QUEUE_COLUMNS = ["type", "image_id", "ann_id", "label", "x1", "y1", "x2", "y2", "proposal_label", "px1", "py1",
                 "px2", "py2", "proposal_score", "score", "other_ann_id"]


@dataclass(frozen=True)
class ScoreSettings:
    match_iou: float = 0.5
    loc_min_iou: float = 0.15
    loc_max_iou: float = 0.7
    dup_iou: float = 0.6
    dup_any_iou: float = 0.85
    miss_iou: float = 0.5
    miss_same_iou: float = 0.15
    miss_min_score: float = 0.05
    spur_iou: float = 0.1
    spur_size_rank: bool = True


def _queue(kind: str, n: int, **cols) -> pd.DataFrame:
    base = {c: np.full(n, -1 if c in ("ann_id", "label", "proposal_label", "other_ann_id") else np.nan)
            for c in QUEUE_COLUMNS if c != "type"}
    base.update(cols)
    frame = pd.DataFrame(base)[QUEUE_COLUMNS[1:]]
    frame.insert(0, "type", kind)
    return frame


def score_labels(labels: BoxTable, preds: BoxTable, crowd: BoxTable | None = None,
                 settings: ScoreSettings | None = None) -> dict[str, pd.DataFrame]:
    """{error type: queue}, each sorted by score (highest first), rank column from 1."""
    s = settings or ScoreSettings()
    ia, ib = image_pairs(labels, preds)
    iou = pair_iou(labels.xyxy[ia], preds.xyxy[ib])
    same_cls = labels.label[ia] == preds.label[ib]
    hit = iou >= s.match_iou
    n = len(labels)
    same = segment_max(np.where(hit & same_cls, preds.score[ib], 0.0), ia, n)
    other_val = np.where(hit & ~same_cls, preds.score[ib], 0.0)
    other = segment_max(other_val, ia, n)
    other_pick = segment_argmax(other_val, ia, n)
    queues = {
        "wrong_class": _wrong_class(labels, preds, ib, same, other, other_pick),
        "spurious": _spurious(labels, segment_max(np.where(iou >= s.spur_iou, preds.score[ib] * iou, 0.0), ia, n), s),
        "bad_location": _bad_location(labels, preds, ia, ib, iou, same_cls, same, s),
        "duplicate": _duplicates(labels, same, s),
        "missing": _missing(labels, preds, crowd, (ia, ib, iou), s),
    }
    return {k: rank(queues[k]) for k in ERROR_TYPES}


def rank(queue: pd.DataFrame) -> pd.DataFrame:
    queue = queue[queue["score"] > 0].sort_values(["score", "image_id", "ann_id"], ascending=[False, True, True],
                                                  kind="stable").reset_index(drop=True)
    queue.insert(1, "rank", np.arange(1, len(queue) + 1))
    return queue


def _label_cols(labels: BoxTable, rows: np.ndarray) -> dict:
    x1, y1, x2, y2 = labels.xyxy[rows].T
    return {"image_id": labels.image_id[rows], "ann_id": labels.ann_id[rows], "label": labels.label[rows],
            "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def _proposal_cols(preds: BoxTable, rows: np.ndarray) -> dict:
    px1, py1, px2, py2 = preds.xyxy[rows].T
    return {"proposal_label": preds.label[rows], "px1": px1, "py1": py1, "px2": px2, "py2": py2,
            "proposal_score": preds.score[rows]}


def _wrong_class(labels, preds, ib, same, other, other_pick) -> pd.DataFrame:
    rows = np.flatnonzero((other > same) & (other_pick >= 0))
    return _queue("wrong_class", len(rows), **_label_cols(labels, rows),
                  **_proposal_cols(preds, ib[other_pick[rows]]), score=(other - same)[rows])


def _spurious(labels, support, s: ScoreSettings) -> pd.DataFrame:
    """Support that is unusually low for a label of this size: the share of labels in its size bin (log2 of the
    box side) that get more support than it does. No support for a large box is rare and suspicious; for a tiny
    one it is common (the model sees few tiny objects), so it ranks lower."""
    side = np.sqrt(np.prod((labels.xyxy[:, 2:] - labels.xyxy[:, :2]).clip(1e-6), 1))
    bins = np.clip(np.floor(np.log2(np.maximum(side, 1.0))), 2, 9).astype(np.int64)
    score = np.zeros(len(labels))
    for b in np.unique(bins):  # at most 8 size bins
        rows = np.flatnonzero(bins == b)
        ranked = np.sort(support[rows])
        score[rows] = 1.0 - np.searchsorted(ranked, support[rows], "right") / len(rows)
    if not s.spur_size_rank:
        score[:] = 1.0
    rows = np.arange(len(labels))
    return _queue("spurious", len(rows), **_label_cols(labels, rows), score=score * (1.0 - support))


def _bad_location(labels, preds, ia, ib, iou, same_cls, same, s: ScoreSettings) -> pd.DataFrame:
    """A prediction of the label's class that moved: partial overlap with this label, none with any other."""
    sc = same_cls & (iou > 0)
    pa, pb, piou = ia[sc], ib[sc], iou[sc]
    # per prediction: its closest same-class label, and whether any same-class label matches it already
    closest = segment_argmax(piou, pb, len(preds))
    best_iou = segment_max(piou, pb, len(preds))
    mine = closest[pb] == np.arange(len(pb))
    ok = mine & (best_iou[pb] < s.match_iou) & (piou >= s.loc_min_iou) & (piou < s.loc_max_iou)
    value = np.where(ok, preds.score[pb] * (1.0 - piou), 0.0)
    pick = segment_argmax(value, pa, len(labels))
    best = segment_max(value, pa, len(labels))
    rows = np.flatnonzero((pick >= 0) & (best > 0))
    score = best[rows] - same[rows]
    return _queue("bad_location", len(rows), **_label_cols(labels, rows), **_proposal_cols(preds, pb[pick[rows]]),
                  score=score)


def _duplicates(labels, same, s: ScoreSettings) -> pd.DataFrame:
    """Pairs of labels covering one thing; the entry is the label with less support (the later on ties)."""
    ia, ib = image_pairs(labels, labels)
    keep = ia < ib
    ia, ib = ia[keep], ib[keep]
    iou = pair_iou(labels.xyxy[ia], labels.xyxy[ib])
    same_cls = labels.label[ia] == labels.label[ib]
    dup = (same_cls & (iou >= s.dup_iou)) | (iou >= s.dup_any_iou)
    ia, ib, iou = ia[dup], ib[dup], iou[dup]
    weaker_a = (same[ia] < same[ib]) | ((same[ia] == same[ib]) & (labels.ann_id[ia] > labels.ann_id[ib]))
    entry, keeper = np.where(weaker_a, ia, ib), np.where(weaker_a, ib, ia)
    score = iou * np.where(labels.label[ia] == labels.label[ib], 1.0, 0.9)
    frame = _queue("duplicate", len(entry), **_label_cols(labels, entry), score=score,
                   other_ann_id=labels.ann_id[keeper])
    kx1, ky1, kx2, ky2 = labels.xyxy[keeper].T
    frame["px1"], frame["py1"], frame["px2"], frame["py2"] = kx1, ky1, kx2, ky2
    frame["proposal_label"] = labels.label[keeper]
    return frame.sort_values("score", ascending=False).drop_duplicates("ann_id")


def _missing(labels, preds, crowd, pairs, s: ScoreSettings) -> pd.DataFrame:
    """Predictions nothing covers, scored by how often a prediction of that class and score *is* labelled in
    this data: a confident person nobody labelled is suspicious where persons are always labelled, a small book
    much less so where books rarely are. Among overlapping candidates only the strongest stays."""
    il, ip, iou = pairs  # the label x prediction pairs score_labels made
    covered = segment_max(iou, ip, len(preds))
    same_iou = segment_max(np.where(labels.label[il] == preds.label[ip], iou, 0.0), ip, len(preds))
    labelled = same_iou >= s.match_iou
    if crowd is not None and len(crowd):
        cp, cc = image_pairs(preds, crowd)
        covered = np.maximum(covered, segment_max(pair_ioa(preds.xyxy[cp], crowd.xyxy[cc]), cp, len(preds)))
    rate = labelled_rate(preds, labelled)
    # a prediction overlapping a label of its class is that label's (bad_location), not a missing object
    cand = np.flatnonzero((covered < s.miss_iou) & (same_iou < s.miss_same_iou) &
                          (preds.score >= s.miss_min_score))
    cands = preds.take(cand)  # still sorted by image
    a, b = image_pairs(cands, cands)
    stronger = (cands.score[b] > cands.score[a]) | ((cands.score[b] == cands.score[a]) & (b < a))
    beaten = segment_max((stronger & (pair_iou(cands.xyxy[a], cands.xyxy[b]) >= 0.5)).astype(float), a, len(cands))
    rows = np.flatnonzero(beaten == 0)
    px1, py1, px2, py2 = cands.xyxy[rows].T
    return _queue("missing", len(rows), image_id=cands.image_id[rows], proposal_label=cands.label[rows], px1=px1,
                  py1=py1, px2=px2, py2=py2, proposal_score=cands.score[rows], score=rate[cand[rows]])


def labelled_rate(preds: BoxTable, labelled: np.ndarray, bins: int = 10, prior: float = 5.0) -> np.ndarray:
    """Per prediction: the share of predictions of its class and score decile that a label matches, shrunk
    towards the share of its score decile over all classes (`prior` pseudo-counts)."""
    if not len(preds):
        return np.zeros(0)
    sbin = np.minimum((preds.score * bins).astype(np.int64), bins - 1)
    k = int(preds.label.max()) + 1
    cell = preds.label * bins + sbin
    n_cell = np.bincount(cell, minlength=k * bins).astype(float)
    m_cell = np.bincount(cell, weights=labelled, minlength=k * bins)
    n_bin = np.bincount(sbin, minlength=bins).astype(float)
    base = np.bincount(sbin, weights=labelled, minlength=bins) / np.maximum(n_bin, 1)
    return (m_cell[cell] + prior * base[sbin]) / (n_cell[cell] + prior)
