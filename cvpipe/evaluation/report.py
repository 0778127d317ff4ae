"""The model_eval HTML report: one self-contained file built from metrics.json and the plots."""

from __future__ import annotations

from pathlib import Path

from cvpipe.reporting.html import Report, escape, image, table


def _ap(v: float) -> str:
    return "n/a" if v is None or v < 0 else f"{v:.4f}"


def speed_of(preds) -> dict:
    """Model and decode time per image from the evaluation loop's Predictions."""
    import numpy as np

    model_s, decode_s = preds.model_s, preds.decode_s
    total = float(model_s.sum())
    return {"images_per_s": len(model_s) / total if total > 0 else 0.0, "ms_mean": float(model_s.mean() * 1000),
            "ms_p50": float(np.percentile(model_s, 50) * 1000), "ms_p95": float(np.percentile(model_s, 95) * 1000),
            "decode_ms_mean": float(decode_s.mean() * 1000)}


def decision_section(gate: dict) -> list[str]:
    """The gate's verdict, each criterion and the numbers behind it (the record the promotion log keeps)."""
    css = "good" if gate["verdict"] == "promoted" and not gate.get("undecided_promoted") else "bad"
    parts = [f"<p class='{css}'><b>{escape(gate['verdict'].upper())}</b>: {escape(gate['message'])}</p>"]
    if "interval" in gate:
        rule, lo_hi = gate["rule"], gate["interval"]
        parts.append(table([
            {"key": "margin (non-inferiority, AP)", "value": f"{gate['margin']:g}"},
            {"key": f"{rule['confidence']:.0%} interval of AP(candidate) - AP(reference)",
             "value": f"[{lo_hi[0]:+.4f}, {lo_hi[1]:+.4f}]"},
            {"key": f"smallest drop detected at {rule['power']:.0%} power", "value": f"{gate['detectable_drop']:.4f}"},
            {"key": "images for a decisive test at this margin", "value": gate["images_needed"]},
            {"key": "P(candidate better) over the resamples", "value": f"{gate['p_better']:.3f}"}]))
    parts.append(table([{"criterion": c["name"], "verdict": c["verdict"], "reason": c["reason"]}
                        for c in gate["criteria"]]))
    data = gate.get("data")
    if data:
        parts.append(f"<p class='note'>Decided on {data['images']} images of split {escape(data['split'])}, "
                     f"data digest {escape(data['digest'][:16])}…</p>")
    return parts


def baseline_section(m: dict) -> list[str]:
    """Champion (or pretrained start) vs challenger: the gate, the 12 COCO numbers and AP per class."""
    gate, base = m["gate"], m.get("baseline")
    verdict = decision_section(gate)
    if base is None:
        return verdict
    who = f"{base['kind']} ({base['name']})"
    stats = [{"metric": k, who: _ap(base["stats"].get(k)), "this model": _ap(v),
              "difference": f"{v - base['stats'][k]:+.4f}" if k in base["stats"] else ""}
             for k, v in m["stats"].items()]
    per_class = gate.get("per_class", {})
    classes = [{"class": n, who: _ap(base["per_class_ap"].get(n, -1)), "this model": _ap(v),
                "difference": f"{v - base['per_class_ap'][n]:+.4f}" if v >= 0 and base["per_class_ap"].get(n, -1) >= 0
                else "", "interval": _interval(per_class.get(n)),
                "P(better)": f"{per_class[n]['p_better']:.2f}" if per_class.get(n, {}).get("p_better") is not None
                else ""} for n, v in m["per_class_ap"].items()]
    b = base["bootstrap"]
    note = (f"<p class='note'>Same {m['images']} images for both; paired bootstrap over images "
            f"({b['resamples']} resamples, seed {b['seed']}) of the AP difference, {b['confidence']:.0%} "
            f"two-sided normal bootstrap intervals.</p>")
    return [*verdict, note, table(stats), "<p>AP per class:</p>", table(classes)]


def gain_section(m: dict) -> list[str]:
    """What fine-tuning gained over the model training started from, in one sentence and a table."""
    gain = m.get("gain")
    if not gain:
        return ["<p class='note'>No start to compare with (a model packed from your own ONNX, or a training run "
                "that kept no start.pt).</p>"]
    css = "good" if gain["shown"] else "bad"
    head = f"{gain['confidence']:.0%} interval of the gain"
    rows = [{"metric": "AP", "start": _ap(gain["start_AP"]), "this model": _ap(gain["AP"]),
             "gain": f"{gain['delta']:+.4f}", head: f"[{gain['ci'][0]:+.4f}, {gain['ci'][1]:+.4f}]"},
            {"metric": "AP50", "start": _ap(gain["AP50"]["start_AP50"]), "this model": _ap(gain["AP50"]["AP50"]),
             "gain": f"{gain['AP50']['delta']:+.4f}",
             head: f"[{gain['AP50']['ci'][0]:+.4f}, {gain['AP50']['ci'][1]:+.4f}]"}]
    return [f"<p class='{css}'>{escape(gain['message'][0].upper() + gain['message'][1:])}.</p>", table(rows),
            "<p class='note'>Same images for both; paired bootstrap over images of the difference. The start is "
            "the model training began from (model_train's start.pt, epoch 0: the pretrained weights, with fresh "
            "class predictors where the classes are new), packed by model_pack; where none was packed, the "
            "pretrained ONNX.</p>"]


def _interval(entry: dict | None) -> str:
    if not entry or not entry.get("ci"):
        return ""
    return f"[{entry['ci'][0]:+.3f}, {entry['ci'][1]:+.3f}]"


def build_eval_report(metrics: dict, plots: dict[str, Path], worst: list[dict]) -> Report:
    """metrics: the metrics.json dict; plots: name -> PNG; worst: [{image_id, file, f1, tp, fp, fn, png}]."""
    m = metrics
    rep = Report(f"Model evaluation — model run {m.get('model', {}).get('run_id', '?')}")
    rep.add("Setup", table([
        {"key": "model run", "value": m.get("model", {}).get("run_id", "")},
        {"key": "dataset split", "value": m["split"]},
        {"key": "images", "value": m["images"]},
        {"key": "ground-truth boxes (non-crowd)", "value": m.get("gt_boxes", "")},
        {"key": "detections (score ≥ {:g})".format(m["params"]["score_thr"]), "value": m.get("detections", "")},
        {"key": "input size", "value": str(m.get("model", {}).get("input_size", ""))},
    ]))
    rep.add("COCO metrics", table([{"metric": k, "value": _ap(v)} for k, v in m["stats"].items()]),
            '<p class="note">hotcoco (the numbers of pycocotools), bbox, IoU .50:.95, areas small/medium/large, '
            'max 100 detections.</p>')
    rep.add("What fine-tuning gained", *gain_section(m))
    rep.add("Champion vs challenger", *baseline_section(m))
    s = m["speed"]
    rep.add("Speed", table([
        {"key": "images / s (model only: pre-process + ONNX + post-process)", "value": s["images_per_s"]},
        {"key": "ms / image mean", "value": s["ms_mean"]},
        {"key": "ms / image p50", "value": s["ms_p50"]},
        {"key": "ms / image p95", "value": s["ms_p95"]},
        {"key": "image decoding ms / image (not in the above)", "value": s["decode_ms_mean"]},
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
