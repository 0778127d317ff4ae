"""Is model B really worse than model A on this test split? A paired bootstrap over images of the COCO AP
difference, fast enough for 1,000 resamples of a 5,000-image test set in about a second.

COCO matches detections to ground truth per image and class; only the accumulation into precision-recall
curves mixes images. So each model's detections are matched once (`match_per_image`: pycocotools' `evaluateImg`
rules, greedy by score, crowd regions absorb detections, 100 detections per image and class, IoU .50:.95,
vectorised over all images at once), and a bootstrap resample is only a vector of image multiplicities (how often
each image was drawn). A class's detections are sorted by score once; a resample's true and false positive counts
are cumulative sums of the multiplicities in that fixed order, and the 101-point interpolated precision follows
for a block of resamples at once (`class_aps`). With all multiplicities 1 the AP is COCO's, per class and IoU
threshold (tested to 1e-12). Both models get the same resamples: the interval is on the paired difference, so
image difficulty cancels out.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .coco import results_array

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100
# linspace puts these recall thresholds one ulp above j / 100: a recall of exactly j / 100 does not reach them
_REC_ABOVE = np.array([REC_THRS[j] > j / 100 for j in range(101)] + [False])
_EPS = float(np.spacing(1))  # pycocotools' precision: tp / (tp + fp + eps)


@dataclass
class ClassMatches:
    """One class over all images: its kept detections in COCO's accumulation order (by score, ties by image
    then rank in the image) and the ground-truth counts."""

    scores: np.ndarray  # D
    image: np.ndarray  # D, index into the image list
    tp: np.ndarray  # T x D: matched a non-crowd ground truth
    fp: np.ndarray  # T x D: matched nothing (a detection matched to a crowd region is neither: ignored)
    n_gt: np.ndarray  # N: non-crowd ground truth per image


# ---- matching ---------------------------------------------------------------------------------------------------

def coco_box_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes (rows of d with rows of g), bit for bit as pycocotools' bbIou: for a crowd region
    the union is the detection's area. The same float operations in the same order, so thresholds agree."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    da, ga = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
    union = np.where(crowd, da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


@dataclass
class _Table:
    """Boxes of one kind (ground truth or detections) as columns, in the order matching needs."""

    group: np.ndarray  # category index * images + image index
    box: np.ndarray  # n x 4 xywh
    flag: np.ndarray  # crowd (ground truth) or score (detections)
    row: np.ndarray | None = None  # detections: each one's row in the results array


def _gt_table(gt: dict, img_index: dict[int, int], cat_index: dict[int, int]) -> _Table:
    anns = [a for a in gt["annotations"] if int(a["image_id"]) in img_index and int(a["category_id"]) in cat_index]
    group = np.array([cat_index[int(a["category_id"])] * len(img_index) + img_index[int(a["image_id"])]
                      for a in anns], np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
    box = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
    order = np.lexsort((crowd, group))  # per image and class: real objects first, crowd regions last (stable)
    return _Table(group[order], box[order], crowd[order])


def _det_table(results: np.ndarray, img_index: dict[int, int], cat_index: dict[int, int]) -> _Table:
    img = _lookup(results[:, 0], img_index)
    cat = _lookup(results[:, 6], cat_index)
    ok = (img >= 0) & (cat >= 0)
    group = cat[ok] * len(img_index) + img[ok]
    score, box = results[ok, 5], results[ok, 1:5]
    order = np.lexsort((-score, group))  # per image and class by score, ties in input order (COCO's mergesort)
    group, score, box, row = group[order], score[order], box[order], np.nonzero(ok)[0][order]
    start = np.searchsorted(group, group, side="left")
    keep = np.arange(len(group)) - start < MAX_DETS
    return _Table(group[keep], box[keep], score[keep], row[keep])


def _lookup(ids: np.ndarray, index: dict[int, int]) -> np.ndarray:
    """Position of each id in `index` (its keys sorted), -1 where absent."""
    keys = np.array(sorted(index), dtype=np.float64)
    pos = np.minimum(np.searchsorted(keys, ids), max(len(keys) - 1, 0))
    found = (keys[pos] == ids) if len(keys) else np.zeros(len(ids), bool)
    return np.where(found, pos, -1).astype(np.int64)


def _greedy(dg: np.ndarray, pair_det: np.ndarray, pair_start: np.ndarray, pair_len: np.ndarray, pair_gt: np.ndarray,
            pair_iou: np.ndarray, crowd: np.ndarray, n_gt_boxes: int, tp: np.ndarray, ign: np.ndarray) -> None:
    """pycocotools' greedy matching for detections that overlap some ground truth by >= .5, all images and
    classes at once: step r takes each (image, class)'s r-th such detection (in score order) and gives it, per
    IoU threshold, the free real object of highest IoU (the last one on ties), else the crowd region of highest
    IoU. Detections of different groups never compete, so one step serves all groups. Fills tp and ign (T x D)."""
    cand = np.unique(pair_det[pair_iou >= IOU_THRS[0]])  # the others match nothing at any threshold
    if len(cand) == 0:
        return
    cg = dg[cand]
    rank = np.arange(len(cand)) - np.searchsorted(cg, cg, side="left")
    taken = np.zeros((len(IOU_THRS), n_gt_boxes), bool)
    thr = np.minimum(IOU_THRS, 1 - 1e-10)[:, None, None]
    for r in range(int(rank.max()) + 1):
        rows = cand[rank == r]
        n = pair_len[rows]
        cols = np.arange(int(n.max()))
        valid = cols[None, :] < n[:, None]
        pidx = pair_start[rows][:, None] + np.minimum(cols[None, :], n[:, None] - 1)
        iou, gidx = np.where(valid, pair_iou[pidx], -1.0), pair_gt[pidx]
        is_crowd = crowd[gidx]
        ok = (iou[None] >= thr) & (~taken[:, gidx] | is_crowd[None])  # T x rows x cols
        matched = np.zeros((len(IOU_THRS), len(rows)), bool)
        for group_mask, into in ((~is_crowd, tp), (is_crowd, ign)):  # a real object first, then a crowd region
            vals = np.where(ok & group_mask[None], iou[None], -1.0)
            best = vals.shape[2] - 1 - np.argmax(vals[:, :, ::-1], axis=2)  # last index of the max, as pycocotools
            has = (vals.max(axis=2) >= 0) & ~matched
            t_idx, r_idx = np.nonzero(has)
            into[t_idx, rows[r_idx]] = True
            taken[t_idx, gidx[r_idx, best[t_idx, r_idx]]] = True
            matched |= has


@dataclass
class _Matching:
    image_ids: list[int]
    cat_ids: list[int]
    dets: _Table  # kept detections, by class, image, score
    tp: np.ndarray  # T x kept detections
    ign: np.ndarray  # T x kept detections: matched to a crowd region
    n_gt: np.ndarray  # classes x images: non-crowd ground truth


def _match(gt: dict, detections: list[dict] | np.ndarray) -> _Matching:
    image_ids = sorted(int(i["id"]) for i in gt["images"])
    cat_ids = sorted(int(c["id"]) for c in gt["categories"])
    img_index = {i: n for n, i in enumerate(image_ids)}
    cat_index = {c: n for n, c in enumerate(cat_ids)}
    g, d = _gt_table(gt, img_index, cat_index), _det_table(results_array(detections), img_index, cat_index)
    lo, hi = np.searchsorted(g.group, d.group, "left"), np.searchsorted(g.group, d.group, "right")
    pair_len = hi - lo
    pair_start = np.cumsum(pair_len) - pair_len
    pair_det = np.repeat(np.arange(len(d.group)), pair_len)
    pair_gt = np.repeat(lo, pair_len) + np.arange(len(pair_det)) - np.repeat(pair_start, pair_len)
    pair_iou = coco_box_iou(d.box[pair_det], g.box[pair_gt], g.flag[pair_gt])
    tp = np.zeros((len(IOU_THRS), len(d.group)), bool)
    ign = np.zeros_like(tp)
    _greedy(d.group, pair_det, pair_start, pair_len, pair_gt, pair_iou, g.flag, len(g.group), tp, ign)
    n_gt = np.bincount(g.group[~g.flag], minlength=len(cat_ids) * len(image_ids)).reshape(len(cat_ids), -1)
    return _Matching(image_ids, cat_ids, d, tp, ign, n_gt)


def match_per_image(gt: dict, detections: list[dict] | np.ndarray) -> tuple[list[int], dict[int, ClassMatches]]:
    """(image ids in order, category id -> ClassMatches) for the categories of `gt`; detections (COCO results,
    or their `results_array`) of other images or categories are not evaluated (as COCO)."""
    m = _match(gt, detections)
    d, n_images = m.dets, len(m.image_ids)
    out = {}
    bounds = np.searchsorted(d.group, np.arange(len(m.cat_ids) + 1) * n_images)
    for k, cat in enumerate(m.cat_ids):
        s = slice(bounds[k], bounds[k + 1])
        order = s.start + np.argsort(-d.flag[s], kind="mergesort")  # COCO's accumulation order
        out[cat] = ClassMatches(d.flag[order], d.group[order] - k * n_images, m.tp[:, order],
                                ~(m.tp | m.ign)[:, order], m.n_gt[k].astype(float))
    return m.image_ids, out


def true_positive_rows(gt: dict, results: np.ndarray) -> np.ndarray:
    """Rows of a results array that COCO matches to an object at IoU .5 (benchmarks/bench_gate_noise.py misses
    some of them on purpose)."""
    m = _match(gt, results)
    out = np.zeros(len(results), bool)
    assert m.dets.row is not None  # detections always carry their rows
    out[m.dets.row] = m.tp[0]
    return out


# ---- weighted accumulation ----------------------------------------------------------------------------------------

@dataclass
class ClassPlan:
    """One class reduced to what a weighted accumulation needs. Key detections (a true positive or a crowd hit
    at some IoU threshold, not a crowd hit at all of them) stay one by one; a detection that is a false positive
    at every threshold only adds to the count of detections before the next key detection, so those become
    (segment, image) counts; one that hits a crowd region at every threshold never counts and is dropped. Per
    threshold only its true positives are visited: precision peaks only there, and the first detection to reach
    a recall threshold is one, so the interpolated curve sampled there is COCO's."""

    key_image: np.ndarray  # K: image of each key detection, in score order
    fp_image: np.ndarray  # U: image of each (segment, image) group of always-false detections
    fp_count: np.ndarray  # U: how many detections the group holds
    fp_ends: np.ndarray  # K: groups that lie before each key detection (an index into the U groups)
    tp_at: list[np.ndarray]  # per IoU threshold: its true positives (indices into the K key detections)
    ign_at: list[np.ndarray]  # per IoU threshold: detections matched to crowd regions (ignored; into K)
    n_gt: np.ndarray  # N

    @classmethod
    def of(cls, m: ClassMatches) -> ClassPlan:
        ignored = ~m.tp & ~m.fp
        always_fp = m.fp.all(axis=0)
        key = ~always_fp & ~ignored.all(axis=0)
        n_key = int(key.sum())
        seg: np.ndarray = np.cumsum(key) - key  # for each detection: how many key detections come before it
        keep = always_fp & (seg < n_key)  # false positives after the last key detection change nothing
        pairs = seg[keep].astype(np.int64) * (len(m.n_gt) + 1) + m.image[keep]
        groups, counts = np.unique(pairs, return_counts=True)  # ordered by segment, then image
        group_seg, group_image = np.divmod(groups, len(m.n_gt) + 1)
        ends = np.searchsorted(group_seg, np.arange(n_key), side="right")
        return cls(m.image[key], group_image, counts, ends, [np.nonzero(row)[0] for row in m.tp[:, key]],
                   [np.nonzero(row)[0] for row in ignored[:, key]], m.n_gt)


def _scan(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """Inclusive scan of `op` (np.add, np.maximum) along axis 0, in place. numpy's own accumulate walks each
    column with a stride of a whole row; this adds whole rows instead, in chunks of about sqrt(rows) so that the
    Python loop stays short: each chunk is scanned (all chunks at once), then each chunk takes the carry of the
    one before (about 4x faster than np.cumsum(axis=0) on 18k x 1000 float32)."""
    n = len(a)
    size = max(1, int(np.sqrt(n)))
    full = n // size * size
    chunks = a[:full].reshape(full // size, size, *a.shape[1:])
    for i in range(1, size):
        op(chunks[:, i - 1], chunks[:, i], out=chunks[:, i])
    for j in range(1, len(chunks)):
        op(chunks[j - 1, -1], chunks[j], out=chunks[j])
    for i in range(max(full, 1), n):
        op(a[i - 1], a[i], out=a[i])
    return a


def full_set_aps(m: ClassMatches) -> np.ndarray:
    """AP at each IoU threshold on the whole test set (every image once): COCO's precision[t, :, class, all areas,
    100 detections] averaged over recall; nan without ground truth."""
    return _class_ap(ClassPlan.of(m), np.ones((len(m.n_gt), 1)), np.array([m.n_gt.sum()]))[:, 0]


def _thresholds_reached(tp: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """How many of COCO's 101 recall thresholds are first reached at each row of tp (cumulative true positives;
    npos > 0). tp and npos hold integers below 2**24 / 100 (class_aps picks the dtype so), so floor(100 tp / npos)
    is exact. A recall of exactly j / 100 misses the thresholds linspace put an ulp above j / 100; j * npos / 100
    is a whole number of true positives only where npos is a multiple of 10, so only those columns are checked."""
    scaled = 100 * tp
    reached = np.floor(scaled / npos)
    cols = np.flatnonzero(npos % 10 == 0)
    if len(cols):
        q = reached[:, cols]
        rows, at = np.nonzero(q * npos[cols] == scaled[:, cols])
        reached[rows, cols[at]] -= _REC_ABOVE[q[rows, at].astype(np.int64)]
    reached[1:] -= reached[:-1]
    reached[0] += 1  # recall 0 is reached at the first true positive
    return reached


def _class_ap(plan: ClassPlan, weights_t: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """T x B: AP of one class at each IoU threshold for each column of image weights (N x B, integer-valued;
    npos: B, its weighted ground truth); nan without ground truth. Arrays are (detections x resamples): scans
    add contiguous rows."""
    dtype = weights_t.dtype
    npos = npos.astype(dtype)
    out = np.zeros((len(IOU_THRS), weights_t.shape[1]))
    if len(plan.key_image) and (npos > 0).any():
        w_key = weights_t[plan.key_image]  # K x B
        seen = _scan(w_key.copy(), np.add)  # detections up to each key detection: key ones ...
        if len(plan.fp_image):  # ... and the always-false ones before it
            fp = _scan(weights_t[plan.fp_image] * plan.fp_count[:, None].astype(dtype), np.add)
            before = fp[np.maximum(plan.fp_ends - 1, 0)]
            before[plan.fp_ends == 0] = 0
            seen += before
        safe_npos = np.where(npos > 0, npos, 1)
        for t, (tp_idx, ign_idx) in enumerate(zip(plan.tp_at, plan.ign_at)):
            if len(tp_idx):
                out[t] = _threshold_ap(w_key, seen, tp_idx, ign_idx, safe_npos)
    return np.where(npos[None, :] > 0, out, np.nan)


def _threshold_ap(w_key: np.ndarray, seen: np.ndarray, tp_idx: np.ndarray, ign_idx: np.ndarray,
                  npos: np.ndarray) -> np.ndarray:
    tp = _scan(w_key[tp_idx], np.add)
    counted = seen[tp_idx]  # true + false positives: every detection so far but the ignored ones
    if len(ign_idx):
        ign = np.concatenate([np.zeros((1, tp.shape[1]), tp.dtype), _scan(w_key[ign_idx], np.add)])
        counted -= ign[np.searchsorted(ign_idx, tp_idx)]
    counted += _EPS
    precision = np.divide(tp, counted, out=counted)
    envelope = _scan(precision[::-1], np.maximum)[::-1]  # best precision at this recall or beyond
    reached = _thresholds_reached(tp, npos)
    return np.einsum("kb,kb->b", reached, envelope, dtype=np.float64) / len(REC_THRS)


def _resample_dtype(plans: list[ClassPlan], weights: np.ndarray) -> type[np.floating]:
    """float32 when every count the accumulation forms (detections so far, 100 x true positives) stays below
    2**24, where float32 holds integers exactly; float64 otherwise."""
    if not plans or not len(weights):
        return np.float64
    most_dets = float(weights.sum(axis=1).max()) * MAX_DETS
    most_gt = float((weights @ np.stack([p.n_gt for p in plans], axis=1)).max())
    return np.float32 if max(most_dets, 100 * most_gt) < 2**24 else np.float64


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def class_aps(matches: dict[int, ClassMatches], weights: np.ndarray, cells: int = 16_000_000,
              workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(AP, AP50), each B x C (classes in `matches` order), for each row of image weights (B x N, how often each
    image is drawn); nan where a class has no ground truth in that resample. Rows go in blocks of about `cells`
    / (key detections) (memory), in float32 where its integers stay exact (a float32 AP differs from the float64
    one by ~1e-7; an all-ones row, the full-set estimate, is always float64, COCO's to 1e-12). Classes run on
    `workers` threads (numpy releases the GIL in its loops)."""
    plans = [ClassPlan.of(m) for m in matches.values()]
    B = len(weights)
    ap, ap50 = np.full((B, len(plans)), np.nan), np.full((B, len(plans)), np.nan)
    exact = np.all(weights == 1, axis=1)
    others = np.nonzero(~exact)[0]
    dtype = _resample_dtype(plans, weights)
    size = max(1, cells // max([len(p.key_image) for p in plans] + [len(p.fp_image) for p in plans] + [1]))
    # each block's weights transposed and cast once, shared by all classes
    blocks = [(rows, np.ascontiguousarray(weights[rows].T, dtype=kind)) for rows, kind in
              [(np.nonzero(exact)[0], np.float64)] + [(others[s], dtype) for s in _blocks(len(others), size)]
              if len(rows)]
    npos = weights @ np.stack([p.n_gt for p in plans], axis=1) if plans else np.zeros((B, 0))  # B x C

    def run(k: int) -> None:
        for rows, weights_t in blocks:
            per_thr = _class_ap(plans[k], weights_t, npos[rows, k])
            ap[rows, k], ap50[rows, k] = per_thr.mean(axis=0), per_thr[0]

    with ThreadPoolExecutor(workers or min(2, os.cpu_count() or 1)) as pool:
        list(pool.map(run, range(len(plans))))
    return ap, ap50


def mean_over_classes(per_class: np.ndarray) -> np.ndarray:
    """COCO's summary: the mean over classes with ground truth (0 when none has any)."""
    has = ~np.isnan(per_class)
    return np.where(has.any(axis=1), np.nansum(per_class, axis=1) / np.maximum(has.sum(axis=1), 1), 0.0)


def weighted_ap(matches: dict[int, ClassMatches], weights: np.ndarray) -> np.ndarray:
    """COCO AP (mean over classes with ground truth in the resample) for each row of image weights."""
    return mean_over_classes(class_aps(matches, weights)[0])


def resample_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """resamples x n_images: how often each image is drawn (n draws with replacement per resample)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    offsets = (np.arange(resamples) * n_images)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n_images).reshape(resamples, n_images) \
        .astype(float)


def _interval(estimate: float, replicates: np.ndarray, confidence: float) -> list[float]:
    """The normal bootstrap interval: estimate -/+ z * (standard deviation of the replicates). Its tails rest on
    the standard error, which a few hundred resamples pin down within a few per cent; a percentile's 2.5 % tail
    would need thousands. AP differences over hundreds of images are close to normal (benchmarks/bench_gate_power
    measures the resulting error rates)."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    se = float(replicates.std(ddof=1)) if len(replicates) > 1 else float("inf")
    return [float(estimate - z * se), float(estimate + z * se)]


def paired_bootstrap(gt: dict, candidate: list[dict], reference: list[dict], resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """AP and AP50 of both on all images, their differences (candidate - reference) with two-sided normal
    bootstrap intervals at `confidence`, P(candidate better) over the resamples, and the same per class."""
    image_ids, cand = match_per_image(gt, candidate)
    _, ref = match_per_image(gt, reference)
    return bootstrap_matches(image_ids, cand, ref, {int(c["id"]): c["name"] for c in gt["categories"]},
                             resamples, seed, confidence)


def bootstrap_matches(image_ids: list[int], cand: dict[int, ClassMatches], ref: dict[int, ClassMatches],
                      names: dict[int, str], resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """paired_bootstrap on matches made once (the power benchmark reuses them)."""
    n = len(image_ids)
    weights = np.concatenate([np.ones((1, n)), resample_weights(n, resamples, seed)])
    cand_ap, cand_ap50 = class_aps(cand, weights)
    ref_ap, ref_ap50 = class_aps(ref, weights)
    d_ap = mean_over_classes(cand_ap) - mean_over_classes(ref_ap)
    d_ap50 = mean_over_classes(cand_ap50) - mean_over_classes(ref_ap50)
    per_class = {}
    for k, cat in enumerate(cand):
        d = cand_ap[:, k] - ref_ap[:, k]
        d_full = d[0]
        if np.isnan(d_full):
            continue  # no ground truth of this class in the test split
        d = d[1:][~np.isnan(d[1:])]
        per_class[names.get(cat, str(cat))] = {
            "candidate_ap": float(cand_ap[0, k]), "reference_ap": float(ref_ap[0, k]),
            "delta": float(d_full), "ci": _interval(d_full, d, confidence) if len(d) > 1 else None,
            "p_better": float((d > 0).mean()) if len(d) else None}
    return {"candidate_ap": float(mean_over_classes(cand_ap[:1])[0]),
            "reference_ap": float(mean_over_classes(ref_ap[:1])[0]), "delta": float(d_ap[0]),
            "ci": _interval(d_ap[0], d_ap[1:], confidence), "std": float(d_ap[1:].std(ddof=1)),
            "ci_percentile": [float(q) for q in np.quantile(d_ap[1:], [(1 - confidence) / 2, (1 + confidence) / 2])],
            "p_better": float((d_ap[1:] > 0).mean()),
            "ap50": {"candidate": float(mean_over_classes(cand_ap50[:1])[0]),
                     "reference": float(mean_over_classes(ref_ap50[:1])[0]), "delta": float(d_ap50[0]),
                     "ci": _interval(d_ap50[0], d_ap50[1:], confidence), "std": float(d_ap50[1:].std(ddof=1))},
            "per_class": per_class, "confidence": confidence, "resamples": resamples, "seed": seed, "images": n,
            "interval": "two-sided normal bootstrap (delta -/+ z * se), paired over images"}
