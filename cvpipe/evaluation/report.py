"""The model_eval HTML report: one self-contained file built from metrics.json and the plots."""

from __future__ import annotations

from pathlib import Path

from cvpipe.evaluation.compare import class_deltas, stat_deltas
from cvpipe.reporting.html import Report, escape, image, table


def _ap(v: float) -> str:
    return "n/a" if v is None or v < 0 else f"{v:.4f}"


def build_eval_report(metrics: dict, plots: dict[str, Path], worst: list[dict], previous: dict | None,
                      gate_message: str, gate_ok: bool) -> Report:
    """metrics: the metrics.json dict; plots: name -> PNG; worst: [{image_id, file, f1, tp, fp, fn, png}]."""
    m = metrics
    rep = Report(f"Model evaluation — model run {m.get('model', {}).get('run_id', '?')}")
    rep.add("Setup", table([
        {"key": "model run", "value": m.get("model", {}).get("run_id", "")},
        {"key": "dataset split", "value": m["split"]},
        {"key": "images", "value": m["images"]},
        {"key": "ground-truth boxes (non-crowd)", "value": m.get("gt_boxes", "")},
        {"key": "detections (score ≥ {:g})".format(m["params"]["score_thr"]), "value": m.get("detections", "")},
        {"key": "NMS IoU / max detections", "value": f"{m['params'].get('nms_thr')} / {m['params'].get('max_det')}"},
        {"key": "input size", "value": str(m.get("model", {}).get("input_size", ""))},
    ]))
    rep.add("COCO metrics", table([{"metric": k, "value": _ap(v)} for k, v in m["stats"].items()]),
            '<p class="note">faster-coco-eval, bbox, IoU .50:.95, areas small/medium/large, max 100 detections.</p>')
    if previous is not None:
        cls = "good" if gate_ok else "bad"
        rep.add("Comparison with the previous evaluation",
                f"<p>previous model run: {escape(previous.get('model', {}).get('run_id', '?'))}; "
                f"<span class='{cls}'>{escape(gate_message)}</span></p>",
                table(stat_deltas(m, previous)),
                "<p>Largest per-class AP changes:</p>", table(class_deltas(m, previous, top=15)))
    else:
        rep.add("Comparison with the previous evaluation",
                f"<p class='note'>no previous evaluation; {escape(gate_message)}</p>")
    s = m["speed"]
    rep.add("Speed", table([
        {"key": "images / s (model only: pre-process + ONNX + post-process)", "value": s["images_per_s"]},
        {"key": "ms / image mean", "value": s["ms_mean"]},
        {"key": "ms / image p50", "value": s["ms_p50"]},
        {"key": "ms / image p95", "value": s["ms_p95"]},
        {"key": "image decoding ms / image (not in the above)", "value": s["decode_ms_mean"]},
        {"key": "COCO evaluation s (not in the above)", "value": s["evaluator_s"]},
    ]))
    rep.add("Precision-recall", image(plots["pr_overall"], "PR curves"), image(plots["pr_per_class"], "PR per class"))
    rep.add("AP per class", image(plots["per_class_ap"], "AP per class"),
            table([{"class": n, "AP": _ap(v)} for n, v in sorted(m["per_class_ap"].items(), key=lambda x: -x[1])
                   if v >= 0]))
    cm = m["confusion"]
    rep.add("Confusion matrix",
            f"<p>IoU ≥ {cm['iou_thr']:g}, score ≥ {cm['score_thr']:g}: {cm['tp']} true positives, "
            f"{cm['fp']} false positives, {cm['fn']} false negatives (detections inside crowd regions ignored).</p>",
            image(plots["confusion"], "confusion matrix"))
    parts = ["<p>Lowest per-image F1 at the confusion thresholds. <b style='color:#0a0'>green</b>: matched ground "
             "truth, <b style='color:#06e'>blue</b>: false negatives, <b style='color:#e00'>red</b>: false "
             "positives.</p>"]
    for w in worst:
        parts.append(f"<h3>image {w['image_id']} ({escape(w['file'])}): F1 {w['f1']:.2f}, TP {w['tp']}, "
                     f"FP {w['fp']}, FN {w['fn']}</h3>")
        parts.append(image(w["png"], f"image {w['image_id']}"))
    rep.add("Worst images", *parts)
    return rep
