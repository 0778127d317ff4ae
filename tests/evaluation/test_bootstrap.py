"""The paired bootstrap of the AP difference: its AP is COCO's (also per class and through the compressed
accumulation), resample weights are resampled images, two models of the same quality are not told apart. The
gate on top of it, with independent errors: test_gate.py."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.evaluation.bootstrap import match_per_image, paired_bootstrap, weighted_ap
from cvpipe.evaluation.coco import coco_evaluate

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
