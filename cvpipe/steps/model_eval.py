"""model_eval: COCO metrics of the packed model (what will be served) on the test split, side by side with the
champion (or the pretrained start), a paired bootstrap gate, what fine-tuning gained over the model training
started from (with its interval), a report, and the promotion decision."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
from pydantic import Field

from cvpipe.data.schema import DetectionData, DetectionDataset, ImageFiles
from cvpipe.evaluation.baseline import (
    APDropError,
    EvalModel,
    label_map_for,
    onnx_eval_model,
    packed_eval_model,
    start_eval_model,
)
from cvpipe.evaluation.bootstrap import paired_bootstrap
from cvpipe.evaluation.confusion import confusion_matrix
from cvpipe.evaluation.engine import evaluate
from cvpipe.evaluation.gate import GateRule, gate_decision
from cvpipe.evaluation.leakage import held_out_record, leakage_criterion
from cvpipe.evaluation.plots import (
    draw_errors,
    plot_confusion,
    plot_per_class_ap,
    plot_pr_overall,
    plot_pr_per_class,
)
from cvpipe.evaluation.report import build_eval_report, speed_of
from cvpipe.evaluation.store_links import Reference, resolve_reference, resolve_training_images
from cvpipe.inference.packed import PackedModel
from cvpipe.pipeline import Decision, Folder, Output, Produced, StepContext, StepParams, step
from cvpipe.vision import ClassMap, read_image

log = logging.getLogger(__name__)


class ModelEvalParams(StepParams):
    split: str = "test"
    score_thr: float = 0.001  # low, as COCO mAP wants the whole precision-recall curve
    confusion_iou: float = 0.5
    confusion_score: float = 0.3  # a serving-like threshold for the confusion matrix and worst images
    worst_images: int = 8
    max_images: int | None = None  # evaluate only the first N images of the split (quick checks)
    baseline: Literal["champion", "pretrained", "none"] = Field(
        "champion", description="compare with the promoted model (the pretrained start while there is none), "
                                "always the pretrained start, or nothing")
    pretrained: str | None = Field(None, description="pretrained ONNX (default: what model_train started from, "
                                                     "else weights/yolox_nano/yolox_nano.onnx)")
    margin: float = Field(0.01, gt=0, le=1, description="non-inferiority margin (AP, 0.01 = 1 point): promoted "
                          "only when the lower bound of the AP difference to the champion is >= -margin")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="two-sided interval of the AP difference")
    power: float = Field(0.8, gt=0.5, lt=1, description="for the smallest regression the test set detects; "
                         "below it the verdict is 'held: not enough evidence'")
    when_undecided: Literal["hold", "promote"] = Field(
        "hold", description="too few test images to decide: hold (not promoted), or promote and say so")
    ap50_margin: float | None = Field(None, gt=0, le=1, description="also require AP50 non-inferiority")
    min_class_ap: dict[str, float] = Field(default_factory=dict, description="class name -> AP floor")
    max_latency_ms: float | None = Field(None, gt=0, description="p95 model ms per image (this step's timing)")
    resamples: int = Field(1000, ge=100, le=10000)
    seed: int = 0
    promote: bool = Field(True, description="make the model the champion when the gate passes")


def load_split(dataset: DetectionDataset, params: ModelEvalParams) -> dict:
    gt = dataset.to_coco(params.split, max_images=params.max_images)
    if not gt["images"]:
        splits = sorted(s for s in dataset.images["split"].unique() if s)
        raise ValueError(f"the dataset has no images in split {params.split!r} (splits: {splits})")
    return gt


def run_model(model: EvalModel, gt: dict, images: Path, classes: ClassMap):
    return evaluate(model.predict_batch, gt, images, classes, desc=f"model_eval: {model.kind}",
                    label_map=label_map_for(model, classes))


def reference_key(params: ModelEvalParams, store, input_runs: dict[str, str | None]) -> dict:
    """model_eval's entry in the manifest's depends_on (what its cache is keyed on beside the inputs)."""
    return {"reference": resolve_reference(params, store, input_runs).key}


def reference_model(params: ModelEvalParams, reference: Reference | None, input_size,
                    classes: ClassMap | None = None, start: EvalModel | None = None) -> EvalModel | None:
    """The reference as the evaluation loop runs it, or None.

    A pretrained ONNX that knows none of the dataset's classes (a COCO model on blood cells) cannot be compared;
    the model training started from (`start`: those weights with fresh class predictors, packed by model_pack)
    stands in for it. Without that: when the ONNX stands in for a missing champion there is no baseline (the
    first champion is the candidate); asked for explicitly (baseline=pretrained), it is an error."""
    if reference is None:
        if params.baseline == "none":
            return None
        if start is None:
            log.warning("no pretrained ONNX to compare with; the gate has nothing to compare")
        return start
    if reference.model is not None:
        return packed_eval_model(reference.kind, reference.model, params.score_thr)
    assert reference.onnx is not None  # a Reference is a packed champion or a pretrained ONNX
    pretrained = onnx_eval_model(reference.onnx, input_size, params.score_thr)
    if classes is not None and not pretrained.classes.subset_for(classes):
        if start is not None:
            log.info("the pretrained ONNX (%s) knows none of the dataset's classes: comparing with the model "
                     "training started from (%s)", pretrained.name, start.name)
            return start
        if params.baseline == "champion":
            log.warning("no champion yet, and the pretrained start (%s) knows none of the dataset's classes: "
                        "nothing to compare with", pretrained.name)
            return None
    return pretrained


def gain_over_start(params: ModelEvalParams, gt: dict, images: Path, classes: ClassMap, candidate: tuple,
                    start: EvalModel | None, reference: EvalModel | None, baseline: dict | None) -> dict | None:
    """What fine-tuning gained: the candidate vs the model training started from (model_pack's `start`, else a
    pretrained reference) on the same test images, AP and AP50 with the paired bootstrap interval of the
    difference. Reuses the gate's comparison when the start is its reference; None when there is no start."""
    if start is not None and start is not reference:
        ev, preds = candidate
        _, start_preds = run_model(start, gt, images, classes)
        boot = paired_bootstrap(gt, preds.results, start_preds.results, params.resamples, params.seed,
                                params.confidence)
        over = start
    elif baseline is not None and reference is not None and reference.kind in ("start", "pretrained"):
        boot, over = baseline["bootstrap"], reference
    else:
        return None
    return gain_record(boot, over)


def gain_record(boot: dict, start: EvalModel) -> dict:
    """The gain section of metrics.json and the summary, with the sentence the log and the report print."""
    ap50 = boot["ap50"]
    lo, hi = boot["ci"]
    shown = lo > 0
    message = (f"fine-tuning {'gained' if shown else 'did not show a gain:'} {boot['delta']:+.4f} AP "
               f"({boot['reference_ap']:.4f} -> {boot['candidate_ap']:.4f}; {boot['confidence']:.0%} interval "
               f"[{lo:+.4f}, {hi:+.4f}]{', all above zero' if shown else ''}) and {ap50['delta']:+.4f} AP50 "
               f"({ap50['reference']:.4f} -> {ap50['candidate']:.4f}; interval [{ap50['ci'][0]:+.4f}, "
               f"{ap50['ci'][1]:+.4f}]) over the {start.kind} ({start.name}) on {boot['images']} images")
    return {"over": {"kind": start.kind, "name": start.name}, "images": boot["images"],
            "confidence": boot["confidence"], "AP": boot["candidate_ap"], "start_AP": boot["reference_ap"],
            "delta": boot["delta"], "ci": [lo, hi], "p_better": boot["p_better"],
            "AP50": {"AP50": ap50["candidate"], "start_AP50": ap50["reference"], "delta": ap50["delta"],
                     "ci": list(ap50["ci"])},
            "shown": shown, "message": message}


def gate_rule(params: ModelEvalParams) -> GateRule:
    return GateRule(margin=params.margin, confidence=params.confidence, power=params.power,
                    when_undecided=params.when_undecided, ap50_margin=params.ap50_margin,
                    min_class_ap=dict(params.min_class_ap), max_latency_ms=params.max_latency_ms)


def compare(params, gt, images, classes, candidate: tuple, reference: EvalModel | None,
            more: list[dict]) -> tuple[dict | None, dict]:
    """(baseline section of metrics.json, gate) for the candidate (its CocoEvaluation, Predictions) against the
    reference; `more`: criteria decided elsewhere (held-out data)."""
    ev, preds = candidate
    latency = speed_of(preds)["ms_p95"]
    if reference is None:
        return None, gate_decision(None, gate_rule(params), None, ev.per_class_ap, latency, more)
    ref_eval, ref_preds = run_model(reference, gt, images, classes)
    boot = paired_bootstrap(gt, preds.results, ref_preds.results, params.resamples, params.seed, params.confidence)
    gate = gate_decision(boot, gate_rule(params), f"{reference.kind} {reference.name}", ev.per_class_ap, latency,
                         more)
    gate.update(per_class=boot["per_class"], ap50=boot["ap50"],
                bootstrap={k: boot[k] for k in ("seed", "resamples", "confidence", "images", "interval")})
    baseline = {"kind": reference.kind, "name": reference.name, "stats": ref_eval.stats,
                "per_class_ap": ref_eval.per_class_ap, "bootstrap": boot, "predictions": ref_preds.results}
    return baseline, gate


@step("model_eval", params=ModelEvalParams,
      inputs={"dataset": "data_prep.dataset", "images": "data_prep.images", "model": "model_pack.model",
              "start": "model_pack.start?"},
      outputs=[Output("metrics", Folder, description="metrics.json"),
               Output("predictions", Folder, description="predictions.json, baseline_predictions.json"),
               Output("report", Folder, description="report.html, PR curves, confusion matrix, worst images")],
      resolve={"reference": resolve_reference, "trained_on": resolve_training_images})
def model_eval(params: ModelEvalParams, ctx: StepContext, *, dataset: DetectionData, images: ImageFiles,
               model: PackedModel, reference: Reference | None, trained_on: dict | None,
               start: Folder | None = None) -> Produced:
    """Evaluate the packed model on the test split beside the champion or the pretrained start; say what
    fine-tuning gained over its start; gate; promote."""
    gt = load_split(dataset, params)
    held_out = held_out_record(dataset, params.split, gt)
    classes = ClassMap.from_coco_categories(gt["categories"])
    candidate = packed_eval_model("candidate", model, params.score_thr)
    ev, preds = run_model(candidate, gt, images.directory, classes)
    leak = leakage_criterion(held_out.pop("digests"), trained_on)
    start_model = start_eval_model(start.directory if start is not None else None, params.score_thr)
    ref_model = reference_model(params, reference, model.input_size, classes, start_model)
    baseline, gate = compare(params, gt, images.directory, classes, (ev, preds), ref_model, [leak])
    gain = gain_over_start(params, gt, images.directory, classes, (ev, preds), start_model, ref_model, baseline)
    gate["data"] = held_out
    cm = confusion_matrix(gt, preds.results, iou_thr=params.confusion_iou, score_thr=params.confusion_score)
    metrics = {"split": params.split, "images": len(gt["images"]), "params": params.model_dump(mode="json"),
               "gt_boxes": sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0)),
               "detections": len(preds.results),
               "model": {"run_id": candidate.name, "input_size": list(model.input_size),
                         "model_pack_run": ctx.input_runs.get("model")},
               "stats": ev.stats, "per_class_ap": ev.per_class_ap, "speed": speed_of(preds),
               "confusion": cm.to_dict(), "gate": gate, "gain": gain}
    outputs = write_outputs(ctx, params, metrics, baseline, Evaluated(gt, ev, preds.results, cm), images.directory)
    log.info("model_eval: AP %.4f AP50 %.4f on %d %s images; %s", ev.stats["AP"], ev.stats["AP50"],
             metrics["images"], params.split, gate["message"])
    if gain is not None:
        log.info("model_eval: %s", gain["message"])
    gate["compared"] = {"candidate": ctx.input_runs.get("model"), "candidate_name": candidate.name,
                        "reference": {k: baseline[k] for k in ("kind", "name")} if baseline else None}
    summary = {"AP": ev.stats["AP"], "AP50": ev.stats["AP50"], "images": metrics["images"],
               "images_per_s": metrics["speed"]["images_per_s"], "gate": gate, "gain": gain,
               "baseline": {k: baseline[k] for k in ("kind", "name")} | {"AP": baseline["stats"]["AP"]}
               if baseline else None}
    summary["promotion"] = promotion(params, ctx, summary)
    if gate["verdict"] == "refused":
        raise APDropError(gate["message"])
    return Produced(summary, **outputs)


def promotion(params: ModelEvalParams, ctx: StepContext, summary: dict) -> str:
    """The decision for the promotion log: a promote event (it counts once this run is complete) or a refuse
    event (held or refused; the champion stays), with the gate's decision record; says what happened."""
    model_run = ctx.input_runs.get("model")
    gate = summary["gate"]
    if gate["passed"] and not params.promote:
        return "not promoted (promote: false)"
    if model_run is None:
        return "not promoted: no model_pack run"
    metrics = {k: summary[k] for k in ("AP", "AP50", "images", "baseline")}
    return ctx.decide(Decision(model_run, passed=gate["passed"], promote_on_pass=True, reason=gate["message"],
                               metrics=metrics, record=gate))


@dataclass(frozen=True)
class Evaluated:
    """The candidate's evaluation: ground truth, COCO evaluation, detections (COCO results), confusion matrix."""

    gt: dict
    evaluation: Any
    results: list[dict]
    confusion: Any


def write_outputs(ctx: StepContext, params: ModelEvalParams, metrics: dict, baseline: dict | None,
                  evaluated: Evaluated, images: Path) -> dict[str, Folder]:
    out_metrics, out_preds, out_report = (ctx.workdir(n) for n in ("metrics", "predictions", "report"))
    ev, cm = evaluated.evaluation, evaluated.confusion
    (out_preds / "predictions.json").write_text(json.dumps(evaluated.results))
    if baseline is not None:
        (out_preds / "baseline_predictions.json").write_text(json.dumps(baseline.pop("predictions")))
        metrics["baseline"] = baseline
    (out_metrics / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = {"pr_overall": plot_pr_overall(ev, out_report / "pr_curves.png"),
             "pr_per_class": plot_pr_per_class(ev, out_report / "pr_per_class.png"),
             "per_class_ap": plot_per_class_ap(ev.per_class_ap, out_report / "per_class_ap.png"),
             "confusion": plot_confusion(cm, out_report / "confusion_matrix.png")}
    worst = worst_images(cm, evaluated.gt, images, out_report, params.worst_images)
    build_eval_report(metrics, plots, worst).write(out_report / "report.html")
    return {"metrics": Folder(out_metrics), "predictions": Folder(out_preds), "report": Folder(out_report)}


def worst_images(cm, gt: dict, images: Path, out: Path, n: int) -> list[dict]:
    by_id = {i["id"]: i for i in gt["images"]}
    worst: list[dict] = []
    for res in cm.worst_images(n):
        info = by_id[res.image_id]
        img = read_image(images / info["file_name"])
        png = out / f"worst_{len(worst) + 1:02d}_{res.image_id}.jpg"
        cv2.imwrite(str(png), draw_errors(img, res, cm.names[:-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
        worst.append({"image_id": res.image_id, "file": info.get("original_file_name") or info["file_name"],
                      "f1": res.f1, "tp": res.tp, "fp": len(res.fp), "fn": len(res.fn), "png": png})
    return worst
