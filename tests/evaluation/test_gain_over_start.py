"""model_eval says what fine-tuning gained: the packed model against the model training started from
(model_pack's `start`), on the same test images, with the paired bootstrap interval of the difference; and
for classes the pretrained ONNX does not know (BCCD), that start is the baseline the gate compares with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coco_data import need_data
from step_context import run_step, step_context

from cvpipe.pipeline.step import get_step

from .helpers import write_dataset


def scrambled_start(model_dir: Path, dev_gt: dict) -> Path:
    """The nano ONNX packed with every class row naming the next class: a start that finds objects but calls
    them by the wrong class (what a fresh class predictor does), so its AP is ~0."""
    from .packed_model import write_packed_model

    write_packed_model(model_dir, dev_gt, run_id="start-run")
    card = json.loads((model_dir / "model.json").read_text())
    for key in ("class_names", "category_ids"):
        card[key] = card[key][1:] + card[key][:1]
    (model_dir / "model.json").write_text(json.dumps(card))
    return model_dir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, dev_gt):
    from .packed_model import write_packed_model

    need_data()
    tmp = tmp_path_factory.mktemp("gain")
    ids = [i["id"] for i in dev_gt["images"][:24]]
    dataset, images = write_dataset(tmp, dev_gt, ids)
    model = write_packed_model(tmp / "model", dev_gt)
    return tmp, dataset, images, model, scrambled_start(tmp / "start", dev_gt)


def evaluate(tmp: Path, name: str, params: dict, **inputs) -> tuple[dict, dict, str]:
    ctx = step_context(tmp / name, "model_eval", run_id=name, input_runs={"model": "pack-1"})
    summary = run_step(ctx, get_step("model_eval").params(resamples=300, promote=False, **params), **inputs)
    metrics = json.loads((ctx.output("metrics") / "metrics.json").read_text())
    return summary, metrics, (ctx.output("report") / "report.html").read_text()


def test_gain_over_a_worse_start_has_its_interval_above_zero(inputs):
    tmp, dataset, images, model, start = inputs
    summary, metrics, html = evaluate(tmp, "better", {}, dataset=dataset, images=images, model=model, start=start)
    gain = summary["gain"]
    assert gain == metrics["gain"] and gain["over"]["kind"] == "start"
    assert gain["start_AP"] < 0.05 and gain["AP"] == pytest.approx(summary["AP"], abs=1e-6)
    assert gain["delta"] == pytest.approx(gain["AP"] - gain["start_AP"])
    assert gain["ci"][0] > 0 and gain["shown"] and gain["AP50"]["ci"][0] > 0
    assert gain["message"].startswith("fine-tuning gained +") and "all above zero" in gain["message"]
    assert "What fine-tuning gained" in html and f"{gain['delta']:+.4f}" in html
    # the COCO classes are known to the pretrained ONNX: the gate still compares with it, not with the start
    assert metrics["baseline"]["kind"] == "pretrained"


def test_no_gain_is_said_plainly(inputs):
    """The model against itself as its start: difference 0, the interval holds zero, and the message says so."""
    tmp, dataset, images, model, _ = inputs
    summary, _, html = evaluate(tmp, "same", {}, dataset=dataset, images=images, model=model, start=model)
    gain = summary["gain"]
    assert gain["delta"] == pytest.approx(0, abs=1e-9) and gain["ci"][0] <= 0 <= gain["ci"][1]
    assert not gain["shown"] and "did not show a gain" in gain["message"] and "all above zero" not in html


def test_without_a_start_there_is_no_gain_section(inputs):
    """A model packed from your own ONNX has no start: no gain (not a made-up one), and the report says why."""
    tmp, dataset, images, model, _ = inputs
    summary, _, html = evaluate(tmp, "nostart", {"baseline": "none"}, dataset=dataset, images=images, model=model,
                                start=tmp / "empty")
    assert summary["gain"] is None and "No start to compare with" in html


def test_new_classes_are_compared_with_the_start():
    """BCCD: the COCO ONNX knows no blood cells, so the start (those weights with fresh class predictors) is the
    baseline, for the gate too; COCO classes keep the pretrained ONNX."""
    from cvpipe.evaluation.baseline import EvalModel
    from cvpipe.steps.model_eval import ModelEvalParams, reference_model, resolve_reference
    from cvpipe.vision import ClassMap

    need_data()
    cells = ClassMap.from_names(["Platelets", "RBC", "WBC"], [1, 2, 3])
    start = EvalModel("start", "training start", lambda images: [], cells)

    def compared(params, classes, start):  # no store behind it: no champion
        return reference_model(params, resolve_reference(params, None, {"model": "pack-1"}).load(), (416, 416),
                               classes, start)

    for baseline in ("champion", "pretrained"):
        assert compared(ModelEvalParams(baseline=baseline), cells, start) is start
    assert compared(ModelEvalParams(baseline="none"), cells, start) is None
    coco = ClassMap.from_names(["person", "car"], [1, 3])
    assert compared(ModelEvalParams(), coco, start).kind == "pretrained"
    assert compared(ModelEvalParams(), cells, None) is None  # as before: no start, no baseline
