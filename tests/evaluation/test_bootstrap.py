"""The paired bootstrap of the AP difference: its AP is COCO's (per class and IoU threshold, to 1e-12), a resample's
weights are exactly the images repeated (against pycocotools' accumulation on the repeated detections), the IoU
is pycocotools' bit for bit, two models of the same quality are not told apart. The gate on top of it, with
independent errors: test_gate.py."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.evaluation import kernels
from cvpipe.evaluation.bootstrap import (
    REC_THRS,
    ClassMatches,
    class_aps,
    coco_box_iou,
    full_set_aps,
    match_per_image,
    paired_bootstrap,
    resample_weights,
    threshold_aps,
    true_positive_rows,
    weighted_ap,
)
from cvpipe.evaluation.coco import coco_evaluate, results_array

from .helpers import perturbed_gt_detections


def synthetic_gt(n_images: int = 300, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        for _ in range(rng.integers(1, 5)):
            w, h = rng.uniform(20, 200, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 4)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}


def synthetic_model(gt: dict, seed: int, jitter: float = 0.06, miss: float = 0.1) -> list[dict]:
    """GT boxes jittered (score falls with the jitter), some missed, two false positives per image."""
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        if rng.random() < miss:
            continue
        x, y, w, h = a["bbox"]
        q = rng.normal(0, jitter, 4)
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [x + q[0] * w, y + q[1] * h, w * (1 + q[2]), h * (1 + q[3])],
                    "score": float(np.clip(0.9 - abs(q).sum() + rng.normal(0, 0.1), 0.01, 1))})
    for img in gt["images"]:
        for _ in range(2):
            out.append({"image_id": img["id"], "category_id": int(rng.integers(1, 4)),
                        "bbox": list(rng.uniform(0, 300, 4) + [0, 0, 10, 10]), "score": float(rng.uniform(0, 0.7))})
    return out


def test_unit_weights_give_coco_ap_with_crowds(nano_dets_subset):
    gt, dets = nano_dets_subset  # real YOLOX-Nano detections, 8 of the 24 images with crowd regions
    ids, matches = match_per_image(gt, dets)
    assert weighted_ap(matches, np.ones((1, len(ids))))[0] == pytest.approx(coco_evaluate(gt, dets).stats["AP"],
                                                                            abs=1e-9)


def test_unit_weights_give_coco_ap_on_perturbed_ground_truth(dev_gt):
    dets = perturbed_gt_detections(dev_gt, seed=3)
    ids, matches = match_per_image(dev_gt, dets)
    assert weighted_ap(matches, np.ones((1, len(ids))))[0] == pytest.approx(coco_evaluate(dev_gt, dets).stats["AP"],
                                                                            abs=1e-9)


def test_weights_are_resampled_images(nano_dets_subset):
    """Weight 2 on an image means that image twice: the same AP as a dataset with it duplicated."""
    gt, dets = nano_dets_subset
    ids, matches = match_per_image(gt, dets)
    w = np.ones((1, len(ids)))
    w[0, 0], w[0, 1] = 2, 0
    dup = ids[0]
    new_id = max(ids) + 1
    gt2 = {**gt, "images": [i for i in gt["images"] if i["id"] != ids[1]] + [{**next(i for i in gt["images"]
                                                                                    if i["id"] == dup), "id": new_id}],
           "annotations": [a for a in gt["annotations"] if a["image_id"] != ids[1]] +
                          [{**a, "id": 10**9 + k, "image_id": new_id}
                           for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == dup)]}
    dets2 = [d for d in dets if d["image_id"] != ids[1]] + [{**d, "image_id": new_id} for d in dets
                                                              if d["image_id"] == dup]
    assert weighted_ap(matches, w)[0] == pytest.approx(coco_evaluate(gt2, dets2).stats["AP"], abs=2e-3)


def test_per_class_and_ap50_differences_with_intervals():
    """One record: AP and AP50 differences, per class, P(candidate better); the interval is delta -/+ z * se."""
    gt = synthetic_gt(120)
    r = paired_bootstrap(gt, synthetic_model(gt, seed=2, miss=0.3), synthetic_model(gt, seed=1), resamples=300,
                         seed=0)
    assert r["delta"] < -0.05 and r["p_better"] < 0.05  # misses 30 % instead of 10 %
    z = 1.959964
    assert r["ci"] == pytest.approx([r["delta"] - z * r["std"], r["delta"] + z * r["std"]], rel=1e-5)
    assert set(r["per_class"]) == {"c1", "c2", "c3"}
    for c in r["per_class"].values():
        assert c["ci"][0] < c["delta"] < c["ci"][1] and 0 <= c["p_better"] <= 1
        assert c["delta"] == pytest.approx(c["candidate_ap"] - c["reference_ap"])
    assert r["ap50"]["delta"] < 0 and r["ap50"]["ci"][0] < r["ap50"]["delta"] < r["ap50"]["ci"][1]
    full = coco_evaluate(gt, synthetic_model(gt, seed=2, miss=0.3)).per_class_ap
    assert r["per_class"]["c2"]["candidate_ap"] == pytest.approx(full["c2"], abs=1e-9)


@pytest.mark.parametrize("seed", [2, 3])
def test_noise_of_the_same_quality_is_not_a_drop(seed):
    gt = synthetic_gt()
    r = paired_bootstrap(gt, synthetic_model(gt, seed=seed), synthetic_model(gt, seed=1), resamples=500, seed=0)
    assert r["ci"][0] < 0 < r["ci"][1], r
    assert r["images"] == 300 and r["resamples"] == 500


def test_the_same_seed_gives_the_same_interval():
    gt = synthetic_gt(60)
    a, b = synthetic_model(gt, 1), synthetic_model(gt, 2)
    assert paired_bootstrap(gt, a, b, 200, seed=7) == paired_bootstrap(gt, a, b, 200, seed=7)


# ---- the fast path, exact -------------------------------------------------------------------------------------

def assert_per_threshold_ap_is_cocos(gt: dict, dets: list[dict]) -> None:
    ev = coco_evaluate(gt, dets)
    _, matches = match_per_image(gt, results_array(dets))
    for cat, m in matches.items():
        p = ev.precision[:, :, ev.cat_ids.index(cat), 0, -1]  # T x R: all areas, 100 detections
        ours = full_set_aps(m)
        if (p > -1).any():
            assert np.abs(ours - p.mean(axis=1)).max() <= 1e-12, (cat, ours, p.mean(axis=1))
        else:
            assert np.isnan(ours).all()


def test_every_class_and_iou_threshold_is_cocos_with_crowds(nano_dets_subset):
    """Matching (greedy, crowd regions absorb, 100 per image) and accumulation together, per class and IoU
    threshold; real detections on 24 dev images, 8 with crowd regions."""
    assert_per_threshold_ap_is_cocos(*nano_dets_subset)


def test_every_class_and_iou_threshold_is_cocos_on_perturbed_ground_truth(dev_gt):
    assert_per_threshold_ap_is_cocos(dev_gt, perturbed_gt_detections(dev_gt, seed=5))


def coco_accumulate_repeated(m: ClassMatches, w: np.ndarray) -> np.ndarray:
    """pycocotools' accumulate (its own loops) on the class's detections with image i repeated w[i] times (each
    copy next to the original in score order): the AP at each IoU threshold."""
    rep = w[m.image].astype(int)
    tp, fp = np.repeat(m.tp, rep, axis=1), np.repeat(m.fp, rep, axis=1)
    npig = float((w * m.n_gt).sum())
    out = []
    for t in range(len(tp)):
        tps, fps = np.cumsum(tp[t]).astype(float), np.cumsum(fp[t]).astype(float)
        rc, pr = tps / npig, (tps / (fps + tps + np.spacing(1))).tolist()
        for i in range(len(pr) - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        q = [pr[i] if i < len(pr) else 0.0 for i in np.searchsorted(rc, REC_THRS, side="left")]
        out.append(np.mean(q))
    return np.array(out)


@pytest.fixture(scope="module")
def nano_matches(nano_dets_subset):
    gt, dets = nano_dets_subset
    return match_per_image(gt, dets)


@pytest.mark.parametrize("lanes", [32, 5])
def test_a_resample_is_the_images_repeated_exactly(nano_matches, monkeypatch, lanes):
    """Resample weights against pycocotools' accumulation on the repeated detections, every class, IoU threshold
    and resample to 1e-12 (the compiled accumulation counts whole numbers and divides in float64, as COCO). The
    kernel walks `lanes` resamples at once: 37 rows are two blocks of 32 (the second part empty) or eight of 5."""
    monkeypatch.setattr(kernels, "LANES", lanes)
    ids, matches = nano_matches
    weights = resample_weights(len(ids), 37, seed=3)
    per_threshold = threshold_aps(matches, weights)
    checked = 0
    for k, m in enumerate(matches.values()):
        for b in range(len(weights)):
            if (weights[b] @ m.n_gt) > 0:
                assert np.abs(per_threshold[b, k] - coco_accumulate_repeated(m, weights[b])).max() <= 1e-12
                checked += 1
            else:
                assert np.isnan(per_threshold[b, k]).all()
    assert checked > 200


def test_rows_are_independent_of_how_they_are_split_over_threads(nano_matches, monkeypatch):
    """Rows run in parallel blocks of lanes: each row's AP is the same computed alone, among 40 others, or in
    blocks of another size."""
    ids, matches = nano_matches
    weights = resample_weights(len(ids), 40, seed=5)
    together = threshold_aps(matches, weights)
    for b in (0, 17, 39):
        assert np.array_equal(threshold_aps(matches, weights[b:b + 1])[0], together[b], equal_nan=True)
    monkeypatch.setattr(kernels, "LANES", 3)
    assert np.array_equal(threshold_aps(matches, weights), together, equal_nan=True)


def test_weights_must_be_whole_draw_counts(nano_matches):
    ids, matches = nano_matches
    with pytest.raises(ValueError, match="whole numbers"):
        threshold_aps(matches, np.full((1, len(ids)), 0.5))
    with pytest.raises(ValueError, match="whole numbers"):
        threshold_aps(matches, -np.ones((1, len(ids))))


@pytest.mark.parametrize("n_gt, found", [(20, 7), (100, 69), (50, 41)])
def test_recall_exactly_on_a_threshold_linspace_put_an_ulp_higher(n_gt, found):
    """n_gt objects, `found` of them first: recall found / n_gt is exactly j / 100 while REC_THRS[j] is an ulp
    above (linspace; j = 35, 69, 82: both halves of the kernel's bit mask), so COCO takes the precision of that
    recall from the next true positive; 4 false positives sit in between. Also drawn twice."""
    j = 100 * found // n_gt
    assert REC_THRS[j] > j / 100 and j * n_gt == 100 * found
    tp = np.array([True] * found + [False] * 4 + [True] * (n_gt - found))
    m = ClassMatches(np.linspace(1, 0.1, len(tp)), np.zeros(len(tp), int), np.tile(tp, (10, 1)),
                     np.tile(~tp, (10, 1)), np.array([float(n_gt)]))
    w = np.ones(1)
    assert full_set_aps(m) == pytest.approx(coco_accumulate_repeated(m, w), abs=1e-15)
    assert class_aps({1: m}, np.array([[1.0], [2.0]]))[0][:, 0] == pytest.approx(
        [coco_accumulate_repeated(m, w).mean(), coco_accumulate_repeated(m, 2 * w).mean()], abs=1e-15)


def test_iou_is_pycocotools_bit_for_bit():
    from faster_coco_eval.core import mask as mask_utils  # pycocotools' bbIou, ported

    rng = np.random.default_rng(0)
    d = np.column_stack([rng.uniform(0, 100, (4000, 2)), rng.uniform(0.5, 60, (4000, 2))])
    g = np.column_stack([d[:, :2] + rng.normal(0, 8, (4000, 2)), d[:, 2:] * rng.uniform(0.7, 1.4, (4000, 2))])
    crowd = rng.random(4000) < 0.3
    ref = np.array([mask_utils.iou([a.tolist()], [b.tolist()], [int(c)])[0][0] for a, b, c in zip(d, g, crowd)])
    assert np.array_equal(coco_box_iou(d, g, crowd), ref)


def test_true_positive_rows_are_the_matches_at_iou_half(dev_gt):
    dets = perturbed_gt_detections(dev_gt, seed=2)
    results = results_array(dets)
    rows = true_positive_rows(dev_gt, results)
    _, matches = match_per_image(dev_gt, results)
    assert rows.sum() == sum(int(m.tp[0].sum()) for m in matches.values()) > 100
    assert rows.sum() > sum(int(m.tp[-1].sum()) for m in matches.values())  # .5, not .95
    sure = [d["score"] for d, hit in zip(dets, rows) if hit]  # input order kept: the flagged rows' own scores
    assert sorted(sure) == sorted(s for m in matches.values() for s in m.scores[m.tp[0]])
