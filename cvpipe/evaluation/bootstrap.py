"""Is model B really worse than model A on this test split? A paired bootstrap over images of the COCO AP
difference.

COCO matches detections to ground truth per image and class; only the accumulation into precision-recall
curves mixes images. So each model's detections are matched once (`match_per_image`, the pycocotools
`evaluateImg` rules: greedy by score, crowd regions absorb detections, 100 detections per image and class,
IoU .50:.95), and every bootstrap resample is a vector of image weights (how often each image was drawn)
applied in a weighted accumulation. With all weights 1 the AP equals faster-coco-eval's (tested). Both
models get the same resamples: the interval is on the paired difference, so image difficulty cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


@dataclass
class ClassMatches:
    """One class over all images: its detections (kept ones, any order) and ground-truth counts."""

    scores: np.ndarray  # D
    image: np.ndarray  # D, index into the image list
    tp: np.ndarray  # T x D: matched a non-ignored ground truth
    fp: np.ndarray  # T x D: matched nothing (and not inside a crowd region)
    n_gt: np.ndarray  # N: non-crowd ground truth per image


def _iou(dets_xywh: np.ndarray, gts_xywh: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    from faster_coco_eval.core import mask as mask_utils  # COCO's own IoU (crowd: intersection / det area)

    if len(dets_xywh) == 0 or len(gts_xywh) == 0:
        return np.zeros((len(dets_xywh), len(gts_xywh)))
    return np.asarray(mask_utils.iou(dets_xywh.tolist(), gts_xywh.tolist(), crowd.astype(np.uint8).tolist()))


def _match_image(dets: list[dict], gts: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, tp T x D, fp T x D) for one image and class, by pycocotools' greedy rules."""
    gts = sorted(gts, key=lambda g: int(bool(g.get("iscrowd", 0))))  # non-crowd first (stable)
    dets = sorted(dets, key=lambda d: -d["score"])[:MAX_DETS]
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool)
    ious = _iou(np.array([d["bbox"] for d in dets], float).reshape(-1, 4),
                np.array([g["bbox"] for g in gts], float).reshape(-1, 4), crowd)
    T, D = len(IOU_THRS), len(dets)
    taken = np.zeros((T, len(gts)), dtype=bool)
    matched, ignored = np.zeros((T, D), bool), np.zeros((T, D), bool)
    thr = np.minimum(IOU_THRS, 1 - 1e-10)[:, None]
    for d in range(D):
        ok = (ious[d][None, :] >= thr) & (~taken | crowd[None, :])  # T x G candidates
        for group, is_crowd in ((~crowd, False), (crowd, True)):  # a real object first, then a crowd region
            cand = ok & group[None, :]
            has = cand.any(axis=1) & ~matched[:, d]
            if not has.any():
                continue
            vals = np.where(cand, ious[d][None, :], -1.0)
            best = vals.shape[1] - 1 - np.argmax(vals[:, ::-1], axis=1)  # last index of the max, as pycocotools
            rows = np.nonzero(has)[0]
            matched[rows, d] = True
            ignored[rows, d] = is_crowd
            taken[rows, best[rows]] = True
    scores = np.array([d["score"] for d in dets], float)
    return scores, matched & ~ignored, ~matched


def match_per_image(gt: dict, detections: list[dict]) -> tuple[list[int], dict[int, ClassMatches]]:
    """(image ids in order, category id -> ClassMatches) for the categories of `gt`."""
    image_ids = sorted(int(i["id"]) for i in gt["images"])
    index = {i: n for n, i in enumerate(image_ids)}
    gts: dict[tuple[int, int], list] = {}
    dts: dict[tuple[int, int], list] = {}
    for a in gt["annotations"]:
        gts.setdefault((int(a["category_id"]), int(a["image_id"])), []).append(a)
    for d in detections:
        if int(d["image_id"]) in index:
            dts.setdefault((int(d["category_id"]), int(d["image_id"])), []).append(d)
    out = {}
    for cat in sorted(int(c["id"]) for c in gt["categories"]):
        n_gt = np.zeros(len(image_ids))
        parts = []
        for img in image_ids:
            g, d = gts.get((cat, img), []), dts.get((cat, img), [])
            n_gt[index[img]] = sum(1 for a in g if not a.get("iscrowd", 0))
            if d:
                s, tp, fp = _match_image(d, g)
                parts.append((s, np.full(len(s), index[img]), tp, fp))
        if parts:
            s, im, tp, fp = (np.concatenate(x, axis=-1) for x in zip(*parts))
        else:
            s, im, tp, fp = np.zeros(0), np.zeros(0, int), np.zeros((len(IOU_THRS), 0), bool), \
                np.zeros((len(IOU_THRS), 0), bool)
        order = np.argsort(-s, kind="mergesort")
        out[cat] = ClassMatches(s[order], im[order], tp[:, order], fp[:, order], n_gt)
    return image_ids, out


def _class_ap(m: ClassMatches, weights: np.ndarray) -> np.ndarray:
    """AP@[.5:.95] of one class for each row of image weights (B x N); nan where it has no ground truth."""
    npos = weights @ m.n_gt  # B
    B, D = weights.shape[0], len(m.scores)
    if D == 0:
        return np.where(npos > 0, 0.0, np.nan)
    w = weights[:, m.image]  # B x D
    ap = np.zeros(B)
    offsets = 2.0 * np.arange(B)[:, None]  # rows made one sorted array for one searchsorted call
    thr = (REC_THRS[None, :] + offsets).ravel()
    for t in range(len(IOU_THRS)):
        tp, fp = np.cumsum(w * m.tp[t], axis=1), np.cumsum(w * m.fp[t], axis=1)
        recall = tp / np.maximum(npos, 1e-12)[:, None]
        precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        idx = np.searchsorted((recall + offsets).ravel(), thr, side="left").reshape(B, -1) - \
            (np.arange(B) * D)[:, None]
        q = np.take_along_axis(precision, np.minimum(idx, D - 1), axis=1) * (idx < D)
        ap += q.mean(axis=1)
    return np.where(npos > 0, ap / len(IOU_THRS), np.nan)


def weighted_ap(matches: dict[int, ClassMatches], weights: np.ndarray, chunk: int = 64) -> np.ndarray:
    """COCO AP (mean over classes with ground truth in the resample) for each row of image weights."""
    rows = []
    for start in range(0, weights.shape[0], chunk):
        w = weights[start:start + chunk]
        per_class = np.stack([_class_ap(m, w) for m in matches.values()], axis=1) if matches else \
            np.full((len(w), 1), np.nan)
        with np.errstate(invalid="ignore"):
            rows.append(np.nanmean(np.where(np.isnan(per_class).all(axis=1, keepdims=True), 0, per_class), axis=1))
    return np.concatenate(rows)


def paired_bootstrap(gt: dict, candidate: list[dict], reference: list[dict], resamples: int = 500,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """AP of both on all images, their difference (candidate - reference) and its bootstrap interval."""
    image_ids, cand = match_per_image(gt, candidate)
    _, ref = match_per_image(gt, reference)
    n = len(image_ids)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(float)
    full = np.ones((1, n))
    a_c, a_r = weighted_ap(cand, full)[0], weighted_ap(ref, full)[0]
    delta = weighted_ap(cand, weights) - weighted_ap(ref, weights)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(delta, [alpha, 1 - alpha])
    return {"candidate_ap": float(a_c), "reference_ap": float(a_r), "delta": float(a_c - a_r),
            "ci": [float(lo), float(hi)], "confidence": confidence, "resamples": resamples, "seed": seed,
            "images": n, "std": float(delta.std())}
