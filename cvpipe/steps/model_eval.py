"""model_eval: COCO metrics of the packed model (what will be served) on the test split, side by side with the
champion (or the pretrained start), a paired bootstrap gate, a report, and the promotion decision."""

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
    gate_decision,
    label_map_for,
    onnx_eval_model,
    packed_eval_model,
)
from cvpipe.evaluation.bootstrap import paired_bootstrap
from cvpipe.evaluation.confusion import confusion_matrix
from cvpipe.evaluation.engine import evaluate
from cvpipe.evaluation.plots import draw_errors, plot_confusion, plot_per_class_ap, plot_pr_overall, plot_pr_per_class
from cvpipe.evaluation.report import build_eval_report, speed_of
from cvpipe.evaluation.store_links import Reference, resolve_reference
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
    max_ap_drop: float = Field(0.0, ge=0, description="refuse when the whole bootstrap interval of the AP "
                                                      "difference lies below -max_ap_drop")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    resamples: int = Field(500, ge=50, le=5000)
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
                    classes: ClassMap | None = None) -> EvalModel | None:
    """The reference as the evaluation loop runs it, or None.

    A start that knows none of the dataset's classes (a COCO model on blood cells) cannot be compared: when it
    stands in for a missing champion, there is no baseline (the first champion is the candidate); asked for
    explicitly (baseline=pretrained), it is an error."""
    if reference is None:
        if params.baseline != "none":
            log.warning("no pretrained ONNX to compare with; the gate has nothing to compare")
        return None
    if reference.model is not None:
        return packed_eval_model(reference.kind, reference.model, params.score_thr)
    assert reference.onnx is not None  # a Reference is a packed champion or a pretrained ONNX
    start = onnx_eval_model(reference.onnx, input_size, params.score_thr)
    if params.baseline == "champion" and classes is not None and not start.classes.subset_for(classes):
        log.warning("no champion yet, and the pretrained start (%s) knows none of the dataset's classes: "
                    "nothing to compare with", start.name)
        return None
    return start


def compare(params, gt, images, classes, cand_results, reference: EvalModel | None) -> tuple[dict | None, dict]:
    """(baseline section of metrics.json, gate) for the candidate's COCO results against the reference."""
    if reference is None:
        return None, gate_decision(None, params.max_ap_drop, None)
    ref_eval, ref_preds = run_model(reference, gt, images, classes)
    boot = paired_bootstrap(gt, cand_results, ref_preds.results, params.resamples, params.seed, params.confidence)
    gate = gate_decision(boot, params.max_ap_drop, f"{reference.kind} {reference.name}")
    baseline = {"kind": reference.kind, "name": reference.name, "stats": ref_eval.stats,
                "per_class_ap": ref_eval.per_class_ap, "bootstrap": boot, "predictions": ref_preds.results}
    return baseline, gate


@step("model_eval", params=ModelEvalParams,
      inputs={"dataset": "data_prep.dataset", "images": "data_prep.images", "model": "model_pack.model"},
      outputs=[Output("metrics", Folder, description="metrics.json"),
               Output("predictions", Folder, description="predictions.json, baseline_predictions.json"),
               Output("report", Folder, description="report.html, PR curves, confusion matrix, worst images")],
      resolve={"reference": resolve_reference})
def model_eval(params: ModelEvalParams, ctx: StepContext, *, dataset: DetectionData, images: ImageFiles,
               model: PackedModel, reference: Reference | None) -> Produced:
    """Evaluate the packed model on the test split beside the champion or the pretrained start; gate; promote."""
    gt = load_split(dataset, params)
    classes = ClassMap.from_coco_categories(gt["categories"])
    candidate = packed_eval_model("candidate", model, params.score_thr)
    ev, preds = run_model(candidate, gt, images.directory, classes)
    baseline, gate = compare(params, gt, images.directory, classes, preds.results,
                             reference_model(params, reference, model.input_size, classes))
    cm = confusion_matrix(gt, preds.results, iou_thr=params.confusion_iou, score_thr=params.confusion_score)
    metrics = {"split": params.split, "images": len(gt["images"]), "params": params.model_dump(mode="json"),
               "gt_boxes": sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0)),
               "detections": len(preds.results),
               "model": {"run_id": candidate.name, "input_size": list(model.input_size),
                         "model_pack_run": ctx.input_runs.get("model")},
               "stats": ev.stats, "per_class_ap": ev.per_class_ap, "speed": speed_of(preds),
               "confusion": cm.to_dict(), "gate": gate}
    outputs = write_outputs(ctx, params, metrics, baseline, Evaluated(gt, ev, preds.results, cm), images.directory)
    log.info("model_eval: AP %.4f AP50 %.4f on %d %s images; %s", ev.stats["AP"], ev.stats["AP50"],
             metrics["images"], params.split, gate["message"])
    if not gate["passed"]:
        raise APDropError(gate["message"])
    summary = {"AP": ev.stats["AP"], "AP50": ev.stats["AP50"], "images": metrics["images"],
               "images_per_s": metrics["speed"]["images_per_s"], "gate": gate,
               "baseline": {k: baseline[k] for k in ("kind", "name")} | {"AP": baseline["stats"]["AP"]}
               if baseline else None}
    summary["promotion"] = promotion(params, ctx, summary)
    return Produced(summary, **outputs)


def promotion(params: ModelEvalParams, ctx: StepContext, summary: dict) -> str:
    """The promote decision (it counts once this run is complete); says what happened."""
    model_run = ctx.input_runs.get("model")
    if not params.promote:
        return "not promoted (promote: false)"
    if model_run is None:
        return "not promoted: no model_pack run"
    metrics = {k: summary[k] for k in ("AP", "AP50", "images", "baseline")}
    return ctx.decide(Decision(model_run, passed=True, promote_on_pass=True, reason=summary["gate"]["message"],
                               metrics=metrics))


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
