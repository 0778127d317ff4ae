"""The self-test: how well the queues find errors on this very data. Errors are injected into a copy of the
labels (cvpipe.labels.inject), the copy is scored against the same out-of-fold predictions, and each queue is
read like a user would: recall in its first k = 2 x injected entries, and precision of its first 100.

Caveat (said in the report too): the predictions come from models trained on the labels as they are, not on
the noisy copy, and the true errors already in the data count against precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .boxes import BoxTable, image_pairs, pair_iou
from .calibrate import hit_rate_curve
from .inject import inject_errors
from .score import ERROR_TYPES, ScoreSettings, score_labels


def hits(queue: pd.DataFrame, truth: pd.DataFrame, kind: str) -> np.ndarray:
    """Per queue entry, the index into `truth` (rows of this type) of the injected error it finds, or -1."""
    t = truth[truth["type"] == kind].reset_index(drop=True)
    out = np.full(len(queue), -1, np.int64)
    if not len(t) or not len(queue):
        return out
    if kind == "missing":  # the proposal must land on the dropped box
        prop = BoxTable.build(queue["image_id"], np.zeros(len(queue)), queue[["px1", "py1", "px2", "py2"]].to_numpy(),
                              None, np.arange(len(queue)))
        drop = BoxTable.build(t["image_id"], np.zeros(len(t)), t[["x1", "y1", "x2", "y2"]].to_numpy(), None,
                              np.arange(len(t)))
        ia, ib = image_pairs(prop, drop)
        good = pair_iou(prop.xyxy[ia], drop.xyxy[ib]) >= 0.5
        out[prop.ann_id[ia[good]]] = drop.ann_id[ib[good]]
        return out
    where = {int(a): i for i, a in enumerate(t["ann_id"])}
    for col in ("ann_id", "other_ann_id") if kind == "duplicate" else ("ann_id",):
        found = queue[col].map(where).fillna(-1).to_numpy(np.int64)
        out = np.where(out >= 0, out, found)
    return out


def evaluate_queues(queues: dict[str, pd.DataFrame], truth: pd.DataFrame, top: int = 100) -> dict[str, dict]:
    """Per type: injected, k, found in the first k, recall, precision of the first `top` (and how many there are)."""
    result = {}
    for kind in ERROR_TYPES:
        q = queues[kind]
        injected = int((truth["type"] == kind).sum())
        k = 2 * injected
        h = hits(q, truth, kind)
        found = len(np.unique(h[:k][h[:k] >= 0]))
        head = h[:top]
        result[kind] = {"injected": injected, "k": k, "found": found,
                        "recall": found / injected if injected else float("nan"),
                        "precision_at": min(top, len(q)),
                        "precision": float((head >= 0).mean()) if len(head) else float("nan")}
    total = sum(r["injected"] for r in result.values())
    heads = [r["precision"] for r in result.values() if r["precision_at"]]
    result["overall"] = {"injected": total, "found": sum(r["found"] for r in result.values()),
                         "recall": sum(r["found"] for r in result.values()) / total if total else float("nan"),
                         "precision": float(np.mean(heads)) if heads else float("nan")}
    return result


@dataclass
class SelfTest:
    table: pd.DataFrame  # one row per (seed, type): injected, k, found, recall, precision_at, precision
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # type -> (score, hit rate) for cvpipe.labels.calibrate


def self_test(labels: BoxTable, preds: BoxTable, crowd: BoxTable | None, image_sizes: dict[int, tuple[int, int]],
              num_classes: int, seeds: int = 5, rate: float = 0.05, settings: ScoreSettings | None = None,
              images: set[int] | None = None, first_seed: int = 0) -> SelfTest:
    """Inject, score and evaluate once per seed; `images` limits the test to those images."""
    if images is not None:
        labels = labels.take(np.flatnonzero(np.isin(labels.image_id, list(images))))
        preds = preds.take(np.flatnonzero(np.isin(preds.image_id, list(images))))
        image_sizes = {i: s for i, s in image_sizes.items() if i in images}
    rows: list[dict] = []
    runs: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []  # per seed: type -> (score, hit) of each entry
    for seed in range(first_seed, first_seed + seeds):
        injected = inject_errors(labels, image_sizes, num_classes, rate, seed)
        queues = score_labels(injected.labels, preds, crowd, settings or ScoreSettings())
        for kind, r in evaluate_queues(queues, injected.truth).items():
            rows.append({"seed": seed, "type": kind, **r})
        runs.append({kind: (queues[kind]["score"].to_numpy(float), hits(queues[kind], injected.truth, kind))
                     for kind in ERROR_TYPES})
    for i, seed in enumerate(range(first_seed, first_seed + seeds)):
        injected = sum(r["injected"] for r in rows if r["seed"] == seed and r["type"] in ERROR_TYPES)
        rows.append({"seed": seed, "type": "merged", **merged_queue(runs, i, injected)})
    return SelfTest(pd.DataFrame(rows), curves_of(runs))


def curves_of(runs: list[dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per type, the hit rate by score over the given self-test runs (cvpipe.labels.calibrate)."""
    return {k: hit_rate_curve(np.concatenate([r[k][0] for r in runs]), np.concatenate([r[k][1] >= 0 for r in runs]))
            for k in ERROR_TYPES}


def merged_queue(runs: list[dict[str, tuple[np.ndarray, np.ndarray]]], i: int, injected: int, top: int = 100
                 ) -> dict:
    """Run i's queues of every type as one, ranked by the chance each entry is an error (its type's hit rate at
    its score), read like a per-type queue: recall in the first 2 x all injected, precision of the first `top`.
    The hit rates come from the *other* runs (from run i itself only when it is the only one): no run is ranked
    with its own answers."""
    curves = curves_of([r for j, r in enumerate(runs) if j != i] or runs)
    p = np.concatenate([np.interp(runs[i][k][0], *curves[k]) for k in ERROR_TYPES])
    score = np.concatenate([runs[i][k][0] for k in ERROR_TYPES])
    # one id per injected error across types (an error found twice counts once)
    found = np.concatenate([np.where(runs[i][k][1] >= 0, runs[i][k][1] * len(ERROR_TYPES) + t, -1)
                            for t, k in enumerate(ERROR_TYPES)])
    order = np.lexsort((-score, -p))  # by p_error, then by the queue's own score
    k = 2 * injected
    head = found[order[:k]]
    got = len(np.unique(head[head >= 0]))
    return {"injected": injected, "k": k, "found": got, "recall": got / injected if injected else float("nan"),
            "precision_at": min(top, len(order)),
            "precision": float((found[order[:top]] >= 0).mean()) if len(order) else float("nan")}


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and worst seed of recall and precision per type."""
    g = table.groupby("type", sort=False)
    return pd.DataFrame({"injected": g["injected"].mean().round(1), "recall": g["recall"].mean(),
                         "recall_sd": g["recall"].std(ddof=1).fillna(0.0), "recall_min": g["recall"].min(),
                         "precision": g["precision"].mean(), "precision_min": g["precision"].min(),
                         "seeds": g["seed"].nunique()}).reset_index()
