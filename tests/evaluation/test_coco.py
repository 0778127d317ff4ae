"""cvpipe.evaluation.coco (hotcoco) against pycocotools, the reference implementation: bit for bit."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pycocotools  # noqa: F401 - the dev extra installs it: a broken install fails here, never skips
import pytest

from cvpipe.evaluation.coco import STAT_NAMES, coco_evaluate, coco_evaluate_models, evaluate_detections, results_array
from cvpipe.vision import box_iou, xywh_to_xyxy

from .helpers import perturbed_gt_detections


def pycoco_eval(gt: dict, dets: list[dict]) -> tuple[np.ndarray, dict]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(dets))
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        per_class[cg.cats[cid]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return np.asarray(ev.stats), per_class


def assert_same(gt, dets):
    ours = evaluate_detections(gt, dets)
    ref_stats, ref_class = pycoco_eval(gt, dets)
    assert [ours["stats"][n] for n in STAT_NAMES] == ref_stats.tolist()  # bit-identical, not merely close
    assert ours["per_class_ap"] == ref_class
    return ours


def test_equals_pycocotools_on_perturbed_ground_truth(dev_gt):
    dets = perturbed_gt_detections(dev_gt)
    ours = assert_same(dev_gt, dets)
    assert 0.2 < ours["stats"]["AP"] < 0.9  # a non-trivial case: neither perfect nor empty


def test_equals_pycocotools_on_nano_detections(nano_dets_subset):
    gt, dets = nano_dets_subset
    ours = assert_same(gt, dets)
    assert ours["stats"]["AP"] > 0.15


def test_crowd_regions_are_ignored_the_same_way(dev_gt, crowd_image_ids):
    gt = {**dev_gt, "images": [i for i in dev_gt["images"] if i["id"] in set(crowd_image_ids)],
          "annotations": [a for a in dev_gt["annotations"] if a["image_id"] in set(crowd_image_ids)]}
    dets = perturbed_gt_detections(gt, seed=1)
    # detections covering crowd regions (crowd's class, top score)
    inside = []
    for a in gt["annotations"]:
        others = [b["bbox"] for b in gt["annotations"] if b["image_id"] == a["image_id"] and not b["iscrowd"]
                  and b["category_id"] == a["category_id"]]
        # a detection also overlapping a normal box that much would match it (COCO prefers normal boxes)
        if a["iscrowd"] and (not others or box_iou(xywh_to_xyxy(a["bbox"]), xywh_to_xyxy(others)).max() < 0.5):
            inside.append({"image_id": a["image_id"], "category_id": a["category_id"],
                           "bbox": list(a["bbox"]), "score": 0.99})
    assert len(inside) >= 5
    base = assert_same(gt, dets)
    with_crowd_hits = assert_same(gt, dets + inside)
    # COCO ignores detections matched to crowd regions: the AP of the crowd classes does not fall
    assert with_crowd_hits["stats"]["AP"] == pytest.approx(base["stats"]["AP"], abs=1e-9)
    # while the same detections with the crowd flag cleared are extra false positives / changed matches
    no_crowd = copy.deepcopy(gt)
    for a in no_crowd["annotations"]:
        a["iscrowd"] = 0
    assert evaluate_detections(no_crowd, dets + inside)["stats"]["AP"] != pytest.approx(base["stats"]["AP"], abs=1e-6)


def test_caller_detections_are_not_modified(dev_gt):
    dets = perturbed_gt_detections(dev_gt)[:50]
    before = copy.deepcopy(dets)
    evaluate_detections(dev_gt, dets)
    assert dets == before


def test_no_detections_gives_zero_ap(dev_gt):
    res = evaluate_detections(dev_gt, [])
    assert res["stats"]["AP"] == 0.0 and res["stats"]["AR100"] == 0.0


def test_pr_curve_area_is_the_ap(dev_gt):
    ev = coco_evaluate(dev_gt, perturbed_gt_detections(dev_gt))
    # COCO's AP at one IoU is the mean of interpolated precision over the 101 recall thresholds
    for iou, key in ((0.5, "AP50"), (0.75, "AP75")):
        r, p = ev.pr_curve(iou)
        assert len(r) == 101 and r[0] == 0 and r[-1] == 1
        assert p.mean() == pytest.approx(ev.stats[key], abs=1e-9)
        assert np.all(np.diff(p) <= 1e-12)  # interpolated precision never rises with recall
    person = next(c["id"] for c in dev_gt["categories"] if c["name"] == "person")
    curves = [ev.pr_curve(t, person)[1] for t in np.linspace(0.5, 0.95, 10)]
    assert np.mean([c.mean() for c in curves]) == pytest.approx(ev.per_class_ap["person"], abs=1e-9)
    with pytest.raises(ValueError, match="not one of the evaluated"):
        ev.pr_curve(0.62)


def test_pr_curve_of_a_hand_computed_case():
    # one class, two GT boxes; ranked detections: TP (0.9), FP (0.8), TP (0.7)
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": 3, "name": "car"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 3, "bbox": [80, 0, 10, 10], "score": 0.8},
            {"image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "score": 0.7}]
    ev = coco_evaluate(gt, dets)
    r, p = ev.pr_curve(0.5, 3)
    # precision 1 up to recall 0.5, then 2/3 (after the FP) up to recall 1
    np.testing.assert_allclose(p[r <= 0.5], 1.0)
    np.testing.assert_allclose(p[r > 0.5], 2 / 3)
    assert ev.stats["AP50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_models_evaluated_together_on_threads_are_each_pycocotools(nano_dets_subset, capsys):
    """coco_evaluate_models: one ground-truth index, each model on its own thread; every model's numbers still
    pycocotools' bit for bit, and nothing is printed (no stdout swapping that threads would tangle)."""
    gt, dets = nano_dets_subset
    models = [dets, perturbed_gt_detections(gt, seed=3), dets[::2]]
    evals = coco_evaluate_models(gt, [results_array(d) for d in models])
    for ev, d in zip(evals, models):
        ref_stats, ref_class = pycoco_eval(gt, d)
        assert [ev.stats[n] for n in STAT_NAMES] == ref_stats.tolist()
        assert ev.per_class_ap == ref_class
    assert capsys.readouterr().out == ""


def test_results_array_is_the_dicts_column_by_column():
    dets = [{"image_id": 3, "category_id": 7, "bbox": [1.5, 2, 30, 40.25], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.125, "extra": "kept out"}]
    assert results_array(dets).tolist() == [[3, 1.5, 2, 30, 40.25, 0.9, 7], [1, 0, 0, 1, 1, 0.125, 2]]
    assert results_array([]).shape == (0, 7)


@pytest.mark.parametrize("bad", [{"bbox": [1, 2, 3]}, {"bbox": [1, 2, 3, 4, 5]}, {"bbox": "1234"},
                                 {"score": float("nan")}, {"score": None}, {"image_id": None}])
def test_results_array_refuses_malformed_results(bad):
    """One malformed row among good ones (a short or long bbox would shift every later box) is an error."""
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    with pytest.raises(ValueError):
        results_array([good, {**good, **bad}, good])
    missing = dict(good)
    del missing["bbox"]
    with pytest.raises(ValueError, match="need image_id"):
        results_array([good, missing])


def test_results_array_says_what_is_wrong_with_the_boxes():
    row = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}
    with pytest.raises(ValueError, match=r"a bbox is \[x, y, w, h\]"):
        results_array([row] * 4)
