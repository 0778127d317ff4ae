"""Is model B really worse than model A on this test split? A paired bootstrap over images of the COCO AP
difference: 1,000 resamples of a 5,000-image test set in about a second (docs/promotion.md).

COCO matches detections to ground truth per image and class; only the accumulation into precision-recall
curves mixes images. So each model's detections are matched once (`match_per_image`: pycocotools' `evaluateImg`
rules, greedy by score, crowd regions absorb detections, 100 detections per image and class, IoU .50:.95, in
one compiled pass over all images), and a bootstrap resample is only a vector of image multiplicities (how often
each image was drawn). A class's detections are sorted by score once; a resample's true and false positive counts
are running sums of the multiplicities in that fixed order, and the 101-point interpolated precision follows
(`threshold_aps`; the loops are cvpipe/evaluation/kernels.py: 32 resamples walk the detections together, as
vector lanes, and blocks of them run in parallel). With all multiplicities 1
the AP is COCO's per class and IoU threshold, and any resample is COCO's on the images repeated (tested to
1e-12). Both models get the same resamples: the interval is on the paired difference, so
image difficulty cancels out.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from . import kernels
from .coco import results_array

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100
# linspace puts these recall thresholds one ulp above j / 100: a recall of exactly j / 100 does not reach them
_REC_ABOVE = [j for j in range(len(REC_THRS)) if REC_THRS[j] > j / 100]
_ABOVE_LO = sum(1 << j for j in _REC_ABOVE if j < 64)  # as bits of two int64 (the kernel's lanes test a bit)
_ABOVE_HI = sum(1 << (j - 64) for j in _REC_ABOVE if j >= 64)


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
    """IoU of paired xywh boxes (rows of d with rows of g), bit for bit as pycocotools' bbIou (the matching's own
    arithmetic): for a crowd region the union is the detection's area."""
    return kernels.pair_ious(np.ascontiguousarray(d, dtype=np.float64), np.ascontiguousarray(g, dtype=np.float64),
                             np.asarray(crowd, dtype=np.bool_))


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
    tp, ign = kernels.greedy_match(d.group, np.ascontiguousarray(d.box), lo, hi, np.ascontiguousarray(g.box),
                                   g.flag, IOU_THRS)
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


def match_pair(gt: dict, candidate: list[dict] | np.ndarray, reference: list[dict] | np.ndarray
               ) -> tuple[list[int], dict[int, ClassMatches], dict[int, ClassMatches]]:
    """match_per_image of two models at once, on two threads (the compiled matching releases the GIL)."""
    with ThreadPoolExecutor(2) as pool:
        (image_ids, cand), (_, ref) = pool.map(lambda d: match_per_image(gt, d), (candidate, reference))
    return image_ids, cand, ref


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
class AccumulationPlan:
    """Classes reduced to what a weighted accumulation needs, in COCO's score order per class. A key detection (a
    true positive or a crowd hit at some IoU threshold, not a crowd hit at all of them) stays one by one, listed
    per threshold where it is a true positive (tp_key) or a crowd hit (ign_key). A detection that is false at
    every threshold only adds to the count of detections before the next key detection, so those become
    (segment between key detections, image) groups with a count; one that hits a crowd region at every threshold
    never counts and is dropped, and so are false positives after the last key detection."""

    key_start: np.ndarray  # C + 1: each class's key detections
    key_image: np.ndarray  # K (int32)
    key_fp_end: np.ndarray  # K: the groups before each key detection end here (an index into the groups)
    fp_start: np.ndarray  # C + 1: each class's groups
    fp_image: np.ndarray  # U (int32)
    fp_count: np.ndarray  # U (int32)
    tp_start: np.ndarray  # C * T + 1: each (class, threshold)'s true positives in tp_key
    tp_key: np.ndarray  # indices into the K key detections
    ign_start: np.ndarray  # C * T + 1
    ign_key: np.ndarray
    n_gt: np.ndarray  # C x N: non-crowd ground truth per image

    @classmethod
    def of(cls, matches: list[ClassMatches], n_images: int) -> AccumulationPlan:
        parts = [_class_items(m, n_images) for m in matches]
        key_start = _starts([len(p[0]) for p in parts])
        fp_start = _starts([len(p[2]) for p in parts])
        tp = [idx + key_start[c] for c, p in enumerate(parts) for idx in p[4]]
        ign = [idx + key_start[c] for c, p in enumerate(parts) for idx in p[5]]
        n_gt = np.stack([m.n_gt for m in matches]) if matches else np.zeros((0, n_images))
        return cls(key_start, _join([p[0] for p in parts], np.int32),
                   _join([p[1] + fp_start[c] for c, p in enumerate(parts)]), fp_start,
                   _join([p[2] for p in parts], np.int32), _join([p[3] for p in parts], np.int32),
                   _starts([len(i) for i in tp]), _join(tp), _starts([len(i) for i in ign]), _join(ign), n_gt)


def _starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def _join(arrays: list[np.ndarray], kind: type = np.int64) -> np.ndarray:
    return np.concatenate(arrays).astype(kind) if arrays else np.zeros(0, kind)


def _class_items(m: ClassMatches, n_images: int) -> tuple:
    """(key image, groups before each key detection, group image, group count, per threshold: its true positives,
    its crowd hits (indices into the key detections)) of one class."""
    ignored = ~m.tp & ~m.fp
    always_fp = m.fp.all(axis=0)
    key = ~always_fp & ~ignored.all(axis=0)
    n_key = int(key.sum())
    seg = np.cumsum(key) - key  # for each detection: how many key detections come before it
    keep = always_fp & (seg < n_key)
    groups, counts = np.unique(seg[keep].astype(np.int64) * (n_images + 1) + m.image[keep], return_counts=True)
    group_seg, group_image = np.divmod(groups, n_images + 1)
    fp_end = np.searchsorted(group_seg, np.arange(n_key), side="right")
    return (m.image[key], fp_end, group_image, counts, [np.flatnonzero(row) for row in m.tp[:, key]],
            [np.flatnonzero(row) for row in ignored[:, key]])


def threshold_aps(matches: dict[int, ClassMatches] | list[ClassMatches], weights: np.ndarray) -> np.ndarray:
    """B x C x T: AP of each class (in `matches` order) at each IoU threshold for each row of image weights (B x N,
    how often each image is drawn: whole numbers); nan where a class has no ground truth in that row. Exact: all
    ones is COCO's precision array averaged over recall (to 1e-12), any row is COCO on the images repeated."""
    classes = list(matches.values()) if isinstance(matches, dict) else list(matches)
    weights = np.atleast_2d(np.asarray(weights))
    counts = np.rint(weights)
    if len(weights) and ((counts != weights).any() or (counts < 0).any()):
        raise ValueError("image weights must be whole numbers >= 0 (how often each image is drawn)")
    plan = AccumulationPlan.of(classes, weights.shape[1])
    npos = np.rint(counts @ plan.n_gt.T)  # B x C; float64 products of whole numbers are exact
    return kernels.resample_aps(np.ascontiguousarray(counts, dtype=np.float64), npos, plan.key_start,
                                plan.key_image, plan.key_fp_end, plan.fp_start, plan.fp_image, plan.fp_count,
                                plan.tp_start, plan.tp_key, plan.ign_start, plan.ign_key, len(IOU_THRS),
                                _ABOVE_LO, _ABOVE_HI, len(REC_THRS), kernels.LANES)


def full_set_aps(m: ClassMatches) -> np.ndarray:
    """AP at each IoU threshold on the whole test set (every image once): COCO's precision[t, :, class, all areas,
    100 detections] averaged over recall; nan without ground truth."""
    return threshold_aps([m], np.ones((1, len(m.n_gt))))[0, 0]


def class_aps(matches: dict[int, ClassMatches], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AP, AP50), each B x C (classes in `matches` order), for each row of image weights (B x N, how often each
    image is drawn); nan where a class has no ground truth in that resample. The rows run on all cores."""
    per_threshold = threshold_aps(matches, weights)
    return per_threshold.mean(axis=2), per_threshold[:, :, 0]


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
    image_ids, cand, ref = match_pair(gt, candidate, reference)
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
