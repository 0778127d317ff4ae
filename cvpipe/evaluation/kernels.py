"""The bootstrap's two inner loops, compiled with numba: COCO's greedy matching and the weighted accumulation of
every resample. The matching is one pass over all (image, class) groups; the accumulation walks each class's
detections once per block of LANES resamples, every step one vector operation over the block (their
multiplicities side by side), and the blocks run on all cores (`prange` threads release the GIL).

Both keep pycocotools' arithmetic: the IoU is `bbIou`'s float operations in the same order; counts are whole
numbers (exact in float64), precision is tp / (tp + fp + eps) in float64 as in `accumulate`, its envelope the
running maximum of those same floats, and a recall threshold is reached where tp / npos >= REC_THRS[j], decided
exactly (j * npos <= 100 * tp, with the thresholds that linspace put an ulp above j / 100 missed at equality). So
with every multiplicity 1 the AP per class and IoU threshold is COCO's, and a resample is COCO on its repeated
images (tests/evaluation/test_bootstrap.py, to 1e-12).

Compiled once per machine and cached next to this file (numba's `cache=True`; NUMBA_CACHE_DIR elsewhere).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_EPS = float(np.spacing(1))  # pycocotools' precision: tp / (tp + fp + eps)


@njit(cache=True, nogil=True)
def _iou(d: np.ndarray, g: np.ndarray, crowd: bool) -> float:
    """pycocotools' bbIou for one xywh pair: the same float operations in the same order."""
    w = min(d[2] + d[0], g[2] + g[0]) - max(d[0], g[0])
    if w <= 0:
        return 0.0
    h = min(d[3] + d[1], g[3] + g[1]) - max(d[1], g[1])
    if h <= 0:
        return 0.0
    inter = w * h
    da = d[2] * d[3]
    union = da if crowd else da + g[2] * g[3] - inter
    return inter / union


@njit(cache=True, nogil=True)
def pair_ious(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of each row of d with the same row of g (the matching's arithmetic, for tests)."""
    out = np.empty(len(d))
    for i in range(len(d)):
        out[i] = _iou(d[i], g[i], crowd[i])
    return out


@njit(cache=True, nogil=True)
def greedy_match(det_group: np.ndarray, det_box: np.ndarray, gt_lo: np.ndarray, gt_hi: np.ndarray,
                 gt_box: np.ndarray, gt_crowd: np.ndarray, iou_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' evaluateImg matching for every (image, class) group: detections sorted by group then score,
    ground truth by group with crowd regions last; gt_lo/gt_hi: each detection's group's ground-truth rows.
    Returns (tp, ign), T x D: matched a real object / a crowd region."""
    n_thr, n_det = len(iou_thrs), len(det_group)
    tp = np.zeros((n_thr, n_det), np.bool_)
    ign = np.zeros((n_thr, n_det), np.bool_)
    start = 0
    while start < n_det:
        end = start + 1
        while end < n_det and det_group[end] == det_group[start]:
            end += 1
        lo, hi = gt_lo[start], gt_hi[start]
        if hi > lo:
            ious = np.empty((end - start, hi - lo))
            for d in range(start, end):
                for g in range(lo, hi):
                    ious[d - start, g - lo] = _iou(det_box[d], gt_box[g], gt_crowd[g])
            taken = np.zeros(hi - lo, np.bool_)
            for t in range(n_thr):
                taken[:] = False
                for d in range(start, end):
                    best, m = min(iou_thrs[t], 1 - 1e-10), -1
                    for g in range(hi - lo):
                        if taken[g] and not gt_crowd[lo + g]:
                            continue
                        if m > -1 and not gt_crowd[lo + m] and gt_crowd[lo + g]:
                            break  # a real object matched: crowd regions (sorted last) only when none is
                        if ious[d - start, g] < best:
                            continue
                        best, m = ious[d - start, g], g  # ties: the later one, as pycocotools
                    if m > -1:
                        taken[m] = True
                        if gt_crowd[lo + m]:
                            ign[t, d] = True
                        else:
                            tp[t, d] = True
        start = end
    return tp, ign


# ---- the accumulation of all resamples, LANES resamples at a time --------------------------------------------------
# Every resample walks the same detections in the same order; only the multiplicities differ. So a block of LANES
# resamples is walked together, each step one vector operation over the block's lanes (a row of LANES
# multiplicities per image). Two things keep LLVM vectorising the lane loops: error_model="numpy" (a float division
# has no Python zero-division branch; divisors here are >= eps) and no table lookup by a computed index (a recall
# threshold's ulp correction is a bit of two int64 masks). The lane count is a run-time argument on purpose: a
# constant trip count is unrolled into scalars before the loop vectoriser sees it.
LANES = 32


@njit(cache=True, parallel=True, error_model="numpy")
def resample_aps(weights: np.ndarray, npos: np.ndarray, key_start: np.ndarray, key_image: np.ndarray,
                 key_fp_end: np.ndarray, fp_start: np.ndarray, fp_image: np.ndarray, fp_count: np.ndarray,
                 tp_start: np.ndarray, tp_key: np.ndarray, ign_start: np.ndarray, ign_key: np.ndarray,
                 n_thr: int, above_lo: int, above_hi: int, n_rec: int, lanes: int) -> np.ndarray:
    """B x C x T: AP of each class at each IoU threshold for each row of image multiplicities (weights, B x N
    whole numbers as float64; npos, B x C: weighted ground truth; nan where 0).

    A class is its key detections in COCO's score order (key_start: C + 1 bounds; their images) and groups of
    detections false at every threshold (fp_start: C + 1 bounds; an image and a count), the groups before key
    detection k ending at key_fp_end[k]. Per class and threshold (c * n_thr + t), tp_key / ign_key list the key
    detections that are a true positive / hit a crowd region there (tp_start / ign_start: bounds). Recall
    threshold j (of n_rec) lies an ulp above j / 100 where bit j of above_lo | above_hi << 64 is set. Blocks of
    `lanes` rows run in parallel."""
    n_rows, n_img = weights.shape
    n_cls = len(key_start) - 1
    out = np.full((n_rows, n_cls, n_thr), np.nan)
    most_keys = max(1, np.max(np.diff(key_start))) if n_cls else 1
    for block in prange((n_rows + lanes - 1) // lanes):
        b0 = block * lanes
        rows = min(lanes, n_rows - b0)
        w = np.zeros((n_img, lanes))  # the block's multiplicities, a row of lanes per image
        for b in range(rows):
            w[:, b] = weights[b0 + b]
        seen = np.empty((most_keys, lanes))  # per key detection: detections up to it (all thresholds)
        state = np.empty((6, lanes))  # scratch of _threshold_lanes
        ap = np.empty(lanes)
        for c in range(n_cls):
            if not (npos[b0:b0 + rows, c] > 0).any():
                continue
            k0 = key_start[c]
            _seen_lanes(w, key_image[k0:key_start[c + 1]], key_fp_end[k0:key_start[c + 1]], fp_image, fp_count,
                        fp_start[c], seen)
            pos = np.ones(lanes)
            for b in range(rows):
                pos[b] = max(npos[b0 + b, c], 1.0)
            for t in range(n_thr):
                s = c * n_thr + t
                _threshold_lanes(w, key_image, seen, k0, tp_key[tp_start[s]:tp_start[s + 1]],
                                 ign_key[ign_start[s]:ign_start[s + 1]], pos, above_lo, above_hi, n_rec, state, ap)
                for b in range(rows):
                    if npos[b0 + b, c] > 0:
                        out[b0 + b, c, t] = ap[b]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _seen_lanes(w: np.ndarray, key_image: np.ndarray, key_fp_end: np.ndarray, fp_image: np.ndarray,
                fp_count: np.ndarray, g: int, seen: np.ndarray) -> None:
    """For each key detection of a class and each lane: how many detections (weighted) come up to it."""
    lanes = w.shape[1]
    total = np.zeros(lanes)
    for k in range(len(key_image)):
        end = key_fp_end[k]
        while g < end:  # the always-false detections before this one
            w_group, count = w[fp_image[g]], np.float64(fp_count[g])
            for b in range(lanes):
                total[b] += w_group[b] * count
            g += 1
        w_key, seen_k = w[key_image[k]], seen[k]
        for b in range(lanes):
            total[b] += w_key[b]
            seen_k[b] = total[b]


@njit(cache=True, nogil=True, error_model="numpy")
def _recall_points(tp: float, npos: float, inv_npos: float, above_lo: int, above_hi: int) -> float:
    """How many recall thresholds tp true positives of npos reach: #{j: tp / npos >= REC_THRS[j]}, decided in
    exact float arithmetic on whole numbers: j * npos <= 100 tp, but a recall of exactly j / 100 falls short of
    the thresholds linspace put an ulp above j / 100."""
    x = 100.0 * tp
    q = np.floor(x * inv_npos)  # floor(x / npos), or one less where x / npos is whole
    r = x - q * npos
    up = 1.0 if r >= npos else 0.0
    q += up
    r -= up * npos
    j = np.int64(q)
    mask = above_hi if j >= 64 else above_lo
    return q + 1.0 - np.float64((mask >> (j & 63)) & 1) * (r == 0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _threshold_lanes(w: np.ndarray, key_image: np.ndarray, seen: np.ndarray, k0: int, tp_key: np.ndarray,
                     ign_key: np.ndarray, npos: np.ndarray, above_lo: int, above_hi: int, n_rec: int,
                     state: np.ndarray, ap: np.ndarray) -> None:
    """COCO's 101-point interpolated AP of one class at one IoU threshold, for each lane, into ap.

    One backward pass over the threshold's true positives (keys tp_key - k0 index seen), counting down from the
    totals: at each, the precision tp / (detections counted + eps) as COCO (crowd hits, ign_key, not counted),
    the envelope (the best precision from there on), and the recall thresholds first reached there, which take
    the envelope. A true positive not drawn in a lane reaches no threshold there and its precision is at most
    the one of the drawn point before it, so every lane walks all of them without a branch."""
    lanes = w.shape[1]
    tp, ign, env, total, hi, inv = state[0], state[1], state[2], state[3], state[4], state[5]
    tp[:] = 0.0
    ign[:] = 0.0
    for i in range(len(tp_key)):
        w_key = w[key_image[tp_key[i]]]
        for b in range(lanes):
            tp[b] += w_key[b]
    for i in range(len(ign_key)):
        w_key = w[key_image[ign_key[i]]]
        for b in range(lanes):
            ign[b] += w_key[b]
    for b in range(lanes):
        env[b] = 0.0
        total[b] = 0.0
        inv[b] = 1.0 / npos[b]
        hi[b] = _recall_points(tp[b], npos[b], inv[b], above_lo, above_hi)
    p = len(ign_key)
    for i in range(len(tp_key) - 1, -1, -1):
        k = tp_key[i]
        while p > 0 and ign_key[p - 1] > k:  # crowd hits after this one stop being subtracted (rare)
            w_key = w[key_image[ign_key[p - 1]]]
            for b in range(lanes):
                ign[b] -= w_key[b]
            p -= 1
        w_key, seen_k = w[key_image[k]], seen[k - k0]
        for b in range(lanes):
            e = max(env[b], tp[b] / (seen_k[b] - ign[b] + _EPS))
            env[b] = e
            tp[b] -= w_key[b]
            lo = _recall_points(tp[b], npos[b], inv[b], above_lo, above_hi)
            total[b] += e * (hi[b] - lo)
            hi[b] = lo
    for b in range(lanes):  # the first point also takes the thresholds reached at zero (recall 0)
        ap[b] = (total[b] + env[b] * hi[b]) / n_rec
