"""model_eval end to end: the packed YOLOX-Nano ONNX through the serving Predictor on real COCO images."""

from __future__ import annotations

import json

import pytest

from cvpipe.evaluation.compare import APDropError
from cvpipe.pipeline import StepContext
from cvpipe.pipeline.step import get_step

from .helpers import NANO_ONNX, write_dataset


def ctx_for(tmp, name="eval"):
    outs = {k: tmp / name / k for k in ("metrics", "predictions", "report")}
    for p in outs.values():
        p.mkdir(parents=True)
    (tmp / name / "scratch").mkdir()
    return StepContext(step="model_eval", run_id=name, outputs=outs, scratch=tmp / name / "scratch",
                       input_runs={"model": "pack-1"})


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, dev_gt, crowd_image_ids):
    from .packed_model import write_packed_model

    if not NANO_ONNX.is_file():
        pytest.skip(f"{NANO_ONNX} not found")
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
    summary = spec.func(spec.params(), ctx, dataset=dataset, images=images, model=model, previous=None)
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


def test_gate_fails_on_ap_drop_and_passes_within_tolerance(eval_inputs, tmp_path):
    tmp, dataset, images, model, ids = eval_inputs
    spec = get_step("model_eval")
    # evaluate 8 images, then pretend the previous model was 0.10 AP better on them
    small = ctx_for(tmp_path, "small")
    s = spec.func(spec.params(max_images=8), small, dataset=dataset, images=images, model=model, previous=None)
    better = json.loads((small.output("metrics") / "metrics.json").read_text())
    better["stats"]["AP"] = s["AP"] + 0.10
    prev_dir = tmp_path / "prev"
    prev_dir.mkdir()
    (prev_dir / "metrics.json").write_text(json.dumps(better))
    failing = ctx_for(tmp_path, "failing")
    with pytest.raises(APDropError, match="dropped by 0.1000"):
        spec.func(spec.params(max_ap_drop=0.05, max_images=8), failing, dataset=dataset, images=images, model=model,
                  previous=prev_dir)
    html = (failing.output("report") / "report.html").read_text()
    assert "Comparison with the previous evaluation" in html and "dropped by" in html  # report written first
    ok = ctx_for(tmp_path, "ok")
    spec.func(spec.params(max_ap_drop=0.15, max_images=8), ok, dataset=dataset, images=images, model=model,
              previous=prev_dir)
    m = json.loads((ok.output("metrics") / "metrics.json").read_text())
    assert m["gate"]["passed"] and m["previous"]["AP"] == pytest.approx(s["AP"] + 0.10)
    assert m["previous"]["same_ground_truth"] and m["stats"]["AP"] == pytest.approx(s["AP"])


def test_missing_split_is_a_clear_error(eval_inputs, tmp_path):
    tmp, dataset, images, model, ids = eval_inputs
    spec = get_step("model_eval")
    with pytest.raises(ValueError, match="no images in split 'val'"):
        spec.func(spec.params(split="val"), ctx_for(tmp_path), dataset=dataset, images=images, model=model)
