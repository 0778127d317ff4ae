"""model_eval: COCO metrics of the packed model (what will be served) on the test split, with a report."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from pydantic import Field

from cvpipe.data.schema import DetectionDataset
from cvpipe.evaluation.coco import coco_evaluate
from cvpipe.evaluation.compare import APDropError, ap_gate, load_metrics
from cvpipe.evaluation.confusion import confusion_matrix
from cvpipe.evaluation.plots import draw_errors, plot_confusion, plot_per_class_ap, plot_pr_overall, plot_pr_per_class
from cvpipe.evaluation.report import build_eval_report
from cvpipe.pipeline import StepContext, StepParams, step
from cvpipe.progress import track

log = logging.getLogger(__name__)


class ModelEvalParams(StepParams):
    split: str = "test"
    score_thr: float = 0.001  # low, as COCO mAP wants the whole precision-recall curve
    confusion_iou: float = 0.5
    confusion_score: float = 0.3  # a serving-like threshold for the confusion matrix and worst images
    worst_images: int = 8
    max_ap_drop: float | None = Field(None, ge=0, description="fail when AP falls more than this below the previous "
                                                              "evaluation's (None: off)")
    max_images: int | None = None  # evaluate only the first N images of the split (quick checks)


def gt_fingerprint(gt: dict) -> str:
    """Identifies the evaluated ground truth, to tell whether two evaluations are comparable."""
    key = json.dumps([sorted(i["id"] for i in gt["images"]),
                      sorted((a["image_id"], a["category_id"], *map(float, a["bbox"])) for a in gt["annotations"])])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def subset_coco(gt: dict, max_images: int | None) -> dict:
    if max_images is None or max_images >= len(gt["images"]):
        return gt
    images = sorted(gt["images"], key=lambda i: i["id"])[:max_images]
    ids = {i["id"] for i in images}
    return {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}


def predict_split(predictor, gt: dict, images_dir: Path, category_ids: list[int], score_thr: float):
    """Run the predictor over the split's images. Returns (COCO results, model seconds per image,
    decode seconds per image); only the predictor's call is in the model time."""
    from cvpipe.vision import decode_image

    results, model_s, decode_s = [], [], []
    for img in track(gt["images"], "model_eval: predicting"):
        path = images_dir / img["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {img['id']} ({img['file_name']}) is missing from the images entity")
        t0 = time.perf_counter()
        bgr = decode_image(path.read_bytes())
        t1 = time.perf_counter()
        det = predictor.predict(bgr, score_thr=score_thr)
        t2 = time.perf_counter()
        decode_s.append(t1 - t0)
        model_s.append(t2 - t1)
        if bgr.shape[:2] != (img["height"], img["width"]):
            log.warning("image %s decodes to %s but the dataset says %dx%d", img["id"], bgr.shape[:2],
                        img["height"], img["width"])
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": int(img["id"]), "category_id": int(category_ids[label]),
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                            "score": round(float(score), 6)})
    return results, np.asarray(model_s), np.asarray(decode_s)


@step("model_eval", params=ModelEvalParams,
      inputs={"dataset": "data_prep.dataset", "images": "data_prep.images", "model": "model_pack.model",
              "previous": "model_eval.metrics?"},
      outputs=["metrics", "predictions", "report"])
def model_eval(params: ModelEvalParams, ctx: StepContext, *, dataset: Path, images: Path, model: Path,
               previous: Path | None = None) -> dict:
    """Evaluate the packed model on the test split: COCO metrics, PR curves, confusion, worst images, speed."""
    from cvpipe.vision import decode_image
    from cvpipe.inference.predictor import Predictor

    ds = DetectionDataset.load(dataset)
    gt = subset_coco(ds.to_coco(params.split), params.max_images)
    if not gt["images"]:
        splits = sorted(s for s in ds.images["split"].unique() if s)
        raise ValueError(f"the dataset has no images in split {params.split!r} (splits: {splits})")
    meta = json.loads((Path(model) / "model.json").read_text())
    category_ids = [int(c) for c in meta["category_ids"]]
    gt_cats = {int(c["id"]) for c in gt["categories"]}
    unknown = sorted(set(category_ids) - gt_cats)
    if unknown:
        raise ValueError(f"the model predicts category ids {unknown} that the dataset does not have; "
                         f"was it trained on another dataset?")
    not_predicted = sorted(gt_cats - set(category_ids))
    if not_predicted:
        log.warning("the model never predicts dataset categories %s: their AP counts as 0 where they have "
                    "ground truth", not_predicted)

    predictor = Predictor.from_dir(model)
    dets, model_s, decode_s = predict_split(predictor, gt, Path(images), category_ids, params.score_thr)

    t0 = time.perf_counter()
    ev = coco_evaluate(gt, dets)
    evaluator_s = time.perf_counter() - t0
    cm = confusion_matrix(gt, dets, iou_thr=params.confusion_iou, score_thr=params.confusion_score)

    n = len(gt["images"])
    speed = {"images_per_s": float(n / model_s.sum()) if model_s.sum() > 0 else 0.0,
             "ms_mean": float(model_s.mean() * 1000), "ms_p50": float(np.percentile(model_s, 50) * 1000),
             "ms_p95": float(np.percentile(model_s, 95) * 1000), "decode_ms_mean": float(decode_s.mean() * 1000),
             "evaluator_s": float(evaluator_s)}
    metrics = {
        "split": params.split, "images": n, "params": {**params.model_dump(mode="json"),
                                                       "nms_thr": meta.get("nms_thr"), "max_det": meta.get("max_det")},
        "gt_boxes": sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0)), "detections": len(dets),
        "gt_fingerprint": gt_fingerprint(gt),
        "model": {"run_id": meta.get("run_id"), "input_size": meta.get("input_size"),
                  "model_pack_run": ctx.input_runs.get("model")},
        "stats": ev.stats, "per_class_ap": ev.per_class_ap, "speed": speed, "confusion": cm.to_dict(),
    }

    prev = load_metrics(previous)
    prev_ap = prev["stats"]["AP"] if prev else None
    gate_ok, gate_msg = ap_gate(ev.stats["AP"], prev_ap, params.max_ap_drop)
    if prev is not None:
        metrics["previous"] = {"run_id": ctx.input_runs.get("previous"),
                               "model_run_id": prev.get("model", {}).get("run_id"), "AP": prev_ap,
                               "same_ground_truth": prev.get("gt_fingerprint") == metrics["gt_fingerprint"]}
        if not metrics["previous"]["same_ground_truth"]:
            gate_msg += " (note: the previous evaluation used different ground truth)"
    metrics["gate"] = {"max_ap_drop": params.max_ap_drop, "passed": gate_ok, "message": gate_msg}

    out_metrics, out_preds, out_report = ctx.output("metrics"), ctx.output("predictions"), ctx.output("report")
    (out_preds / "predictions.json").write_text(json.dumps(dets))
    (out_metrics / "metrics.json").write_text(json.dumps(metrics, indent=2))

    plots = {"pr_overall": plot_pr_overall(ev, out_report / "pr_curves.png"),
             "pr_per_class": plot_pr_per_class(ev, out_report / "pr_per_class.png"),
             "per_class_ap": plot_per_class_ap(ev.per_class_ap, out_report / "per_class_ap.png"),
             "confusion": plot_confusion(cm, out_report / "confusion_matrix.png")}
    by_id = {i["id"]: i for i in gt["images"]}
    names = cm.names[:-1]
    worst = []
    for res in cm.worst_images(params.worst_images):
        info = by_id[res.image_id]
        img = decode_image((Path(images) / info["file_name"]).read_bytes())
        png = out_report / f"worst_{len(worst) + 1:02d}_{res.image_id}.jpg"
        cv2.imwrite(str(png), draw_errors(img, res, names), [cv2.IMWRITE_JPEG_QUALITY, 85])
        worst.append({"image_id": res.image_id, "file": info.get("original_file_name") or info["file_name"],
                      "f1": res.f1, "tp": res.tp, "fp": len(res.fp), "fn": len(res.fn), "png": png})
    build_eval_report(metrics, plots, worst, prev, gate_msg, gate_ok).write(out_report / "report.html")
    log.info("model_eval: AP %.4f AP50 %.4f on %d %s images, %.1f images/s", ev.stats["AP"],
             ev.stats["AP50"], n, params.split, speed["images_per_s"])
    if not gate_ok:
        raise APDropError(gate_msg)
    return {"AP": ev.stats["AP"], "AP50": ev.stats["AP50"], "images": n, "images_per_s": speed["images_per_s"]}
