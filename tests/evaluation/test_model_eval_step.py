"""model_eval end to end: the packed YOLOX-Nano ONNX through the serving Predictor on real COCO images."""

from __future__ import annotations

import json

import pytest
from coco_data import need_data
from step_context import run_step, step_context

from cvpipe.evaluation.baseline import APDropError
from cvpipe.pipeline.step import get_step

from .helpers import NANO_ONNX, write_dataset


def ctx_for(tmp, name="eval"):
    return step_context(tmp / name, "model_eval", run_id=name,
                       input_runs={"model": "pack-1"})


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, dev_gt, crowd_image_ids):
    from .packed_model import write_packed_model

    need_data()
    tmp = tmp_path_factory.mktemp("model_eval")
    ids = [i["id"] for i in dev_gt["images"][:20]] + crowd_image_ids[:4]
    dataset, images = write_dataset(tmp, dev_gt, ids)
    model = write_packed_model(tmp / "model", dev_gt)
    return tmp, dataset, images, model, sorted(set(ids))


@pytest.fixture(scope="module")
def first_run(eval_inputs):
    tmp, dataset, images, model, ids = eval_inputs
    spec = get_step("model_eval")
    ctx = ctx_for(tmp, "first")
    summary = run_step(ctx, spec.params(), dataset=dataset, images=images, model=model)
    return ctx, summary


def test_metrics_predictions_and_report(first_run, eval_inputs, dev_gt):
    ctx, summary = first_run
    ids = eval_inputs[4]
    assert summary["images"] == len(ids)
    assert summary["AP"] > 0.2 and summary["AP50"] > summary["AP"]  # YOLOX-Nano is ~0.26 AP on COCO
    assert summary["images_per_s"] > 0
    metrics = json.loads((ctx.output("metrics") / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == summary["AP"] and len(metrics["stats"]) == 12
    assert metrics["model"]["run_id"] == "nano-test-run"
    preds = json.loads((ctx.output("predictions") / "predictions.json").read_text())
    coco_ids = {c["id"] for c in dev_gt["categories"]}
    assert preds and {p["image_id"] for p in preds} <= set(ids)
    assert {p["category_id"] for p in preds} <= coco_ids and max(p["category_id"] for p in preds) > 80  # COCO ids
    assert all(len(p["bbox"]) == 4 and p["bbox"][2] >= 0 and p["score"] >= 0.001 for p in preds)
    # the saved predictions reproduce the metrics with the reference evaluator
    from .test_coco import pycoco_eval
    gt = {**dev_gt, "images": [i for i in dev_gt["images"] if i["id"] in set(ids)],
          "annotations": [a for a in dev_gt["annotations"] if a["image_id"] in set(ids)]}
    assert pycoco_eval(gt, preds)[0][0] == pytest.approx(summary["AP"], abs=1e-6)
    rep = ctx.output("report")
    html = (rep / "report.html").read_text()
    assert "<img" in html and "src=\"data:image/png;base64," in html and "Worst images" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    for png in ("pr_curves.png", "pr_per_class.png", "per_class_ap.png", "confusion_matrix.png"):
        assert (rep / png).read_bytes()[:4] == b"\x89PNG"
    assert len(list(rep.glob("worst_*.jpg"))) >= 1
    cm = metrics["confusion"]
    assert cm["tp"] > 0 and len(cm["matrix"]) == 81


def test_pretrained_start_beside_the_model_on_a_class_subset(eval_inputs, tmp_path, dev_gt):
    """The 80-class pretrained ONNX is scored on a 6-class dataset (classes mapped by name) and shown beside
    the packed model; the same model as its own baseline is not significantly different: the gate passes."""
    from .helpers import write_dataset

    tmp, dataset, images, model, ids = eval_inputs
    six = {"person", "bicycle", "car", "motorcycle", "bus", "truck"}
    cats = [c for c in dev_gt["categories"] if c["name"] in six]
    sub = {**dev_gt, "categories": cats,
           "annotations": [a for a in dev_gt["annotations"] if a["category_id"] in {c["id"] for c in cats}]}
    ds6, im6 = write_dataset(tmp_path / "six", sub, ids)
    spec = get_step("model_eval")
    ctx = ctx_for(tmp_path, "six")
    s = run_step(ctx, spec.params(baseline="pretrained", pretrained=str(NANO_ONNX), resamples=200, promote=False),
                 dataset=ds6, images=im6, model=model)
    m = json.loads((ctx.output("metrics") / "metrics.json").read_text())
    assert s["gate"]["passed"] and m["baseline"]["kind"] == "pretrained"
    assert set(m["per_class_ap"]) == six and set(m["baseline"]["per_class_ap"]) == six
    assert abs(m["baseline"]["stats"]["AP"] - m["stats"]["AP"]) < 0.02  # the same network (raw vs decoded graph)
    lo, hi = m["baseline"]["bootstrap"]["ci"]
    assert lo <= m["baseline"]["bootstrap"]["delta"] <= hi
    html = (ctx.output("report") / "report.html").read_text()
    assert "Champion vs challenger" in html and "pretrained" in html and "truck" in html


def test_gate_refuses_a_significant_drop(eval_inputs, tmp_path, monkeypatch):
    """A candidate that misses half the classes is refused against the pretrained start; its report is kept."""
    import numpy as np

    from cvpipe.evaluation import baseline as baseline_mod

    tmp, dataset, images, model, ids = eval_inputs
    real = baseline_mod.packed_eval_model

    def no_persons(kind, model_dir, score_thr):
        m = real(kind, model_dir, score_thr)
        inner = m.predict_batch

        def predict(images):
            dets = inner(images)
            for d in dets:
                keep = d.labels >= 40  # half the COCO classes never found
                d.boxes, d.scores, d.labels = d.boxes[keep], d.scores[keep], d.labels[keep]
            return dets
        m.predict_batch = predict
        return m

    import cvpipe.steps.model_eval as step_mod
    monkeypatch.setattr(step_mod, "packed_eval_model", no_persons)
    spec = get_step("model_eval")
    failing = ctx_for(tmp_path, "failing")
    with pytest.raises(APDropError, match="refused: AP: the whole interval lies below"):
        run_step(failing, spec.params(baseline="pretrained", pretrained=str(NANO_ONNX), resamples=200),
                 dataset=dataset, images=images, model=model)
    html = (failing.output("report") / "report.html").read_text()
    assert "Champion vs challenger" in html and "REFUSED" in html  # report written first
    assert np.isfinite(json.loads((failing.output("metrics") / "metrics.json").read_text())["stats"]["AP"])


def test_missing_split_is_a_clear_error(eval_inputs, tmp_path):
    tmp, dataset, images, model, ids = eval_inputs
    spec = get_step("model_eval")
    with pytest.raises(ValueError, match="no images in split 'val'"):
        run_step(ctx_for(tmp_path), spec.params(split="val"), dataset=dataset, images=images, model=model)


def test_a_start_without_the_datasets_classes_is_no_baseline(tmp_path):
    """BCCD: the COCO start knows no blood cells; standing in for a missing champion it gives no baseline (the
    candidate becomes the first champion), asked for by name it stays (and fails later, loudly)."""
    from cvpipe.steps.model_eval import ModelEvalParams, reference_model, resolve_reference
    from cvpipe.vision import ClassMap

    need_data()
    cells = ClassMap.from_names(["Platelets", "RBC", "WBC"], [1, 2, 3])

    def compared(params, classes):  # no store behind it: no champion, the pretrained start stands in
        return reference_model(params, resolve_reference(params, None, {"model": "pack-1"}).load(), (416, 416),
                               classes)

    assert compared(ModelEvalParams(baseline="champion"), cells) is None
    start = compared(ModelEvalParams(baseline="champion"), ClassMap.from_names(["person", "car"], [1, 3]))
    assert start is not None and start.kind == "pretrained"
    assert compared(ModelEvalParams(baseline="pretrained"), cells) is not None


def test_a_candidate_trained_on_test_images_is_refused(eval_inputs, tmp_path, monkeypatch):
    """model_train records the images it trained on; one test image among them refuses the candidate, and the
    decision names the test split's digest."""
    from cvpipe.data.schema import DetectionDataset
    from cvpipe.evaluation.leakage import trained_on
    from cvpipe.pipeline.step import Resolved

    tmp, dataset, images, model, ids = eval_inputs
    test_digests = sorted(DetectionDataset.load(dataset).images["digest"])
    leaked = {"splits": ["train", "val"], "images": 3, "digests": [d[:16] for d in test_digests[:1]] + ["0" * 16]}
    spec = get_step("model_eval")
    monkeypatch.setitem(spec.resolve, "trained_on", lambda params, store, runs: Resolved(None, lambda: leaked))
    params = spec.params(baseline="none")
    with pytest.raises(APDropError, match=f"1 of {len(ids)} test images were in the candidate's training data"):
        run_step(ctx_for(tmp_path, "leak"), params, dataset=dataset, images=images, model=model)
    clean = trained_on(DetectionDataset.load(dataset), splits=("train",))  # no train images in this dataset
    monkeypatch.setitem(spec.resolve, "trained_on", lambda params, store, runs: Resolved(None, lambda: clean))
    s = run_step(ctx_for(tmp_path, "clean"), params, dataset=dataset, images=images, model=model)
    held_out = next(c for c in s["gate"]["criteria"] if c["name"] == "held-out data")
    assert held_out["known"] and held_out["leaked_images"] == 0 and s["gate"]["passed"]
    assert s["gate"]["data"]["images"] == len(ids) and len(s["gate"]["data"]["digest"]) == 64
