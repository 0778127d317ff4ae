"""The bootstrap's two inner loops, compiled with numba: COCO's greedy matching and the weighted accumulation of
every resample. In numpy each was a dozen passes over (detections x resamples) arrays; here each is one pass
with the counts in registers, and the resamples run on all cores (`prange` threads release the GIL).

Both keep pycocotools' arithmetic: the IoU is `bbIou`'s float operations in the same order; counts are exact
integers, precision is tp / (tp + fp + eps) in float64 as in `accumulate`, and a recall threshold is reached
where tp / npos >= REC_THRS[j], decided in integers (j * npos <= 100 * tp, with the thresholds that linspace put
an ulp above j / 100 missed at equality). So with every multiplicity 1 the AP per class and IoU threshold is
COCO's, and a resample is COCO on its repeated images (tests/evaluation/test_bootstrap.py, to 1e-12).

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


@njit(cache=True, nogil=True)
def _recall_needs(npos: int, rec_above: np.ndarray, need: np.ndarray) -> None:
    """need[j]: the fewest true positives whose recall reaches REC_THRS[j], i.e. tp / npos >= REC_THRS[j] in
    float64, decided in integers: j * npos <= 100 * tp, but for the thresholds linspace put an ulp above j / 100
    a recall of exactly j / 100 falls short."""
    for j in range(len(need)):
        need[j] = (j * npos + 99) // 100
        if rec_above[j] and (j * npos) % 100 == 0:
            need[j] += 1


@njit(cache=True, nogil=True)
def _threshold_ap(tps: np.ndarray, counted: np.ndarray, n: int, need: np.ndarray, first: np.ndarray) -> float:
    """COCO's 101-point interpolated AP from the (cumulative true positives, true + false positives) at each true
    positive: recall threshold j takes the precision envelope (the best precision from there on) at the first
    point whose tp reaches need[j]. The envelope is a running maximum from the end, kept as an exact fraction
    (COCO's rounded precisions tp / (counted + eps) order the same, but for counted = 1, where + eps puts 1 below
    a later 1.0), so it is divided only where a threshold takes it."""
    if n == 0:
        return 0.0
    k = 0
    for j in range(len(need)):  # the first point of each threshold (n: never reached)
        while k < n and tps[k] < need[j]:
            k += 1
        first[j] = k
    j = len(need) - 1
    while j >= 0 and first[j] >= n:
        j -= 1
    # counted grows by at least 1 per point, so only the first point can have counted = 1
    env_tp, env_counted, env, total = 0, 1, 0.0, 0.0
    for k in range(n - 1, 0, -1):
        tp, c = tps[k], counted[k]
        if tp * env_counted >= env_tp * c:
            env_tp, env_counted, env = tp, c, -1.0
        while j >= 0 and first[j] == k:
            if env < 0:
                env = env_tp / (env_counted + _EPS)
            total += env
            j -= 1
    if env < 0:
        env = env_tp / (env_counted + _EPS)
    env = max(env, tps[0] / (counted[0] + _EPS))
    total += env * (j + 1)  # the thresholds first reached at the first point
    return total / len(need)


@njit(cache=True, parallel=True)
def resample_aps(weights: np.ndarray, npos: np.ndarray, key_start: np.ndarray, key_image: np.ndarray,
                 key_fp_end: np.ndarray, fp_start: np.ndarray, fp_image: np.ndarray, fp_count: np.ndarray,
                 tp_start: np.ndarray, tp_key: np.ndarray, ign_start: np.ndarray, ign_key: np.ndarray,
                 n_thr: int, rec_above: np.ndarray, n_chunks: int) -> np.ndarray:
    """B x C x T: AP of each class at each IoU threshold for each row of image multiplicities (weights, B x N
    whole numbers; npos, B x C: weighted ground truth; nan where 0).

    A class is its key detections in COCO's score order (key_start: C + 1 bounds; their images) and groups of
    detections false at every threshold (fp_start: C + 1 bounds; an image and a count), the groups before key
    detection k ending at key_fp_end[k]. Per class and threshold (c * n_thr + t), tp_key / ign_key list the key
    detections that are a true positive / hit a crowd region there (tp_start / ign_start: bounds). Rows run in
    parallel in n_chunks chunks (a few per thread), each with its own scratch."""
    n_rows, n_cls = weights.shape[0], len(key_start) - 1
    out = np.full((n_rows, n_cls, n_thr), np.nan)
    most_keys = max(1, np.max(np.diff(key_start))) if n_cls else 1
    for chunk in prange(n_chunks):
        seen = np.empty(most_keys, np.int64)  # per key detection: detections up to it (all thresholds)
        w_key = np.empty(most_keys, np.int64)
        tps = np.empty(most_keys, np.int64)
        counted = np.empty(most_keys, np.int64)
        need = np.empty(len(rec_above), np.int64)
        first = np.empty(len(rec_above), np.int64)
        for b in range(chunk * n_rows // n_chunks, (chunk + 1) * n_rows // n_chunks):
            w_row = weights[b]
            for c in range(n_cls):
                if npos[b, c] <= 0:
                    continue
                k0 = key_start[c]
                _seen_before_keys(w_row, key_image[k0:key_start[c + 1]], key_fp_end[k0:key_start[c + 1]],
                                  fp_image, fp_count, fp_start[c], seen, w_key)
                _recall_needs(npos[b, c], rec_above, need)
                for t in range(n_thr):
                    s = c * n_thr + t
                    n = _points(tp_key, tp_start[s], tp_start[s + 1], ign_key, ign_start[s], ign_start[s + 1], k0,
                                seen, w_key, tps, counted)
                    out[b, c, t] = _threshold_ap(tps, counted, n, need, first)
    return out


@njit(cache=True, nogil=True)
def _seen_before_keys(w_row: np.ndarray, key_image: np.ndarray, key_fp_end: np.ndarray, fp_image: np.ndarray,
                      fp_count: np.ndarray, g: int, seen: np.ndarray, w_key: np.ndarray) -> None:
    """For each key detection of a class: its weight, and how many detections (weighted) come up to it."""
    total = np.int64(0)
    for k in range(len(key_image)):
        end = key_fp_end[k]
        while g < end:  # the always-false detections before this one
            total += np.int64(w_row[fp_image[g]]) * fp_count[g]
            g += 1
        w = np.int64(w_row[key_image[k]])
        total += w
        seen[k], w_key[k] = total, w


@njit(cache=True, nogil=True)
def _points(tp_key: np.ndarray, tp_lo: int, tp_hi: int, ign_key: np.ndarray, ign_lo: int, ign_hi: int, k0: int,
            seen: np.ndarray, w_key: np.ndarray, tps: np.ndarray, counted: np.ndarray) -> int:
    """One threshold's points: at each true positive that was drawn (tp_key[tp_lo:tp_hi] - k0 index seen and
    w_key), the true positives so far and the detections counted so far (all but the crowd hits of this
    threshold, ign_key[ign_lo:ign_hi] - k0). A true positive not drawn is written over (no branch on the draw).
    Returns how many."""
    n, tp, ignored, p = 0, 0, 0, ign_lo
    for i in range(tp_lo, tp_hi):
        k = tp_key[i] - k0
        while p < ign_hi and ign_key[p] - k0 < k:  # crowd hits before it (rare)
            ignored += w_key[ign_key[p] - k0]
            p += 1
        w = w_key[k]
        tp += w
        tps[n], counted[n] = tp, seen[k] - ignored
        n += w > 0
    return n
