"""The gate's bootstrap as it was before the fast path (cvpipe.evaluation.bootstrap at 12747e1): per-image matching
in a Python loop, then a weighted accumulation over (resamples x key detections) per IoU threshold. Kept only as
benchmarks/bench_eval.py's baseline for the speed ratio; cvpipe does not import it."""

# ruff: noqa
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
    from faster_coco_eval.core import (
        mask as mask_utils,  # COCO's own IoU (crowd: intersection / det area)
    )

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
            g, found = gts.get((cat, img), []), dts.get((cat, img), [])
            n_gt[index[img]] = sum(1 for a in g if not a.get("iscrowd", 0))
            if found:
                s, tp, fp = _match_image(found, g)
                parts.append((s, np.full(len(s), index[img]), tp, fp))
        if parts:
            s, im, tp, fp = (np.concatenate(x, axis=-1) for x in zip(*parts))
        else:
            s, im, tp, fp = np.zeros(0), np.zeros(0, int), np.zeros((len(IOU_THRS), 0), bool), \
                np.zeros((len(IOU_THRS), 0), bool)
        order = np.argsort(-s, kind="mergesort")
        out[cat] = ClassMatches(s[order], im[order], tp[:, order], fp[:, order], n_gt)
    return image_ids, out


@dataclass
class CompressedClass:
    """One class reduced to what a weighted accumulation needs (see `compress`)."""

    key_image: np.ndarray  # K: image of each key detection, in score order
    key_tp: np.ndarray  # T x K
    key_fp: np.ndarray  # T x K
    fp_image: np.ndarray  # U: image of each (segment, image) group of always-false detections
    fp_count: np.ndarray  # U: how many detections the group holds
    fp_ends: np.ndarray  # K: groups that lie before each key detection (an index into the U groups)
    n_gt: np.ndarray  # N


def compress(m: ClassMatches) -> CompressedClass:
    """Key detections (a match at some IoU threshold, or a crowd region) stay one by one; the rest are false
    positives at every threshold and only add weight to the false positives before the next key detection, so
    they become (segment, image) counts. Precision peaks only at true positives, so the curve sampled at the key
    detections has the same envelope, hence the same AP; false positives after the last key detection change
    nothing. On real detections at score >= 0.001 this keeps about a tenth of the rows (benchmarks/bench_eval)."""
    key = ~m.fp.all(axis=0)
    n_key = int(key.sum())
    seg: np.ndarray = np.cumsum(key) - key  # for each detection: how many key detections come before it
    keep = ~key & (seg < n_key)
    pairs = seg[keep].astype(np.int64) * (len(m.n_gt) + 1) + m.image[keep]
    groups, counts = np.unique(pairs, return_counts=True)  # ordered by segment, then image
    group_seg, group_image = np.divmod(groups, len(m.n_gt) + 1)
    ends = np.searchsorted(group_seg, np.arange(n_key), side="right")
    return CompressedClass(m.image[key], m.tp[:, key], m.fp[:, key], group_image, counts.astype(float), ends,
                           m.n_gt.astype(float))


def _class_ap(c: CompressedClass, weights: np.ndarray) -> np.ndarray:
    """T x B: AP of one class at each IoU threshold for each row of image weights (B x N); nan without GT."""
    npos = weights @ c.n_gt  # B
    B, K = weights.shape[0], len(c.key_image)
    if K == 0:
        return np.tile(np.where(npos > 0, 0.0, np.nan), (len(IOU_THRS), 1))
    fp_groups = np.cumsum(weights[:, c.fp_image] * c.fp_count, axis=1)
    fp_before = np.concatenate([np.zeros((B, 1)), fp_groups], axis=1)[:, c.fp_ends]  # B x K
    w = weights[:, c.key_image]  # B x K
    offsets = 2.0 * np.arange(B)[:, None]  # rows made one sorted array for one searchsorted call
    thr = (REC_THRS[None, :] + offsets).ravel()
    out = np.empty((len(IOU_THRS), B))
    for t in range(len(IOU_THRS)):
        tp = np.cumsum(w * c.key_tp[t], axis=1)
        fp = np.cumsum(w * c.key_fp[t], axis=1) + fp_before
        recall = tp / np.maximum(npos, 1e-12)[:, None]
        precision = tp / np.maximum(tp + fp, np.finfo(float).eps)
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        idx = np.searchsorted((recall + offsets).ravel(), thr, side="left").reshape(B, -1) - \
            (np.arange(B) * K)[:, None]
        q = np.take_along_axis(precision, np.minimum(idx, K - 1), axis=1) * (idx < K)
        out[t] = q.mean(axis=1)
    return np.where(npos[None, :] > 0, out, np.nan)


def class_aps(matches: dict[int, ClassMatches], weights: np.ndarray, cells: int = 2_000_000
              ) -> tuple[np.ndarray, np.ndarray]:
    """(AP, AP50), each B x C (classes in `matches` order), for each row of image weights; nan where a class
    has no ground truth in that resample. Rows go in chunks of about `cells` / (key detections) (memory)."""
    ap, ap50 = np.full((len(weights), len(matches)), np.nan), np.full((len(weights), len(matches)), np.nan)
    for k, c in enumerate(compress(m) for m in matches.values()):
        chunk = max(1, cells // max(len(c.key_image), len(c.fp_image), 1))
        for start in range(0, len(weights), chunk):
            per_thr = _class_ap(c, weights[start:start + chunk])
            ap[start:start + chunk, k], ap50[start:start + chunk, k] = per_thr.mean(axis=0), per_thr[0]
    return ap, ap50


