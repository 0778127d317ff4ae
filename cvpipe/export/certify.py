"""Export certificate of a packed variant: what was measured before it may be served.

    cert = certify(predict_batch, reference_batch, images, val=ValSplit(...), input_size=(416, 416))

- ap_val: COCO AP on the validation split (cvpipe.evaluation.engine, the one evaluation loop), or None when
  the pack has no validation split (bring-your-own ONNX without data_prep).
- match_f1: boxes of the variant vs the reference model (the PyTorch model for a trained checkpoint, else the
  fp32 ONNX) on the same images at the serving score threshold: one-to-one same-class matches at IoU >= 0.5,
  F1 = 2 * matches / (variant boxes + reference boxes).
- batch: each image's detections in batches of 1..8 (every position of every batch size) against the image
  alone; a result that depends on its neighbours or its position fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvpipe.vision import ClassMap, Detections, box_iou

PredictBatch = Callable[[Sequence[np.ndarray]], "list[Detections]"]
MAX_BATCH = 8


@dataclass
class ValSplit:
    """The validation split the AP is measured on: COCO dict + the images entity + the model's classes."""
    gt: dict
    images_dir: Path
    classes: ClassMap
    label_map: dict[int, int] | None = None  # model label -> dataset label, when the model has more classes


def match_f1(pred: Sequence[Detections], ref: Sequence[Detections], iou_thr: float = 0.5) -> dict:
    """Greedy one-to-one matching per image (reference boxes by descending score, same class, IoU >= iou_thr)."""
    matched = n_pred = n_ref = 0
    for p, r in zip(pred, ref):
        n_pred, n_ref = n_pred + len(p), n_ref + len(r)
        if not len(p) or not len(r):
            continue
        iou = box_iou(np.asarray(r.boxes, float), np.asarray(p.boxes, float))
        used = np.zeros(len(p), bool)
        for i in np.argsort(-r.scores, kind="stable"):
            cand = np.where((p.labels == r.labels[i]) & ~used, iou[i], -1.0)
            j = int(np.argmax(cand))
            if cand[j] >= iou_thr:
                used[j] = True
                matched += 1
    total = n_pred + n_ref
    return {"f1": 1.0 if total == 0 else round(2 * matched / total, 4), "matched": matched,
            "boxes": n_pred, "reference_boxes": n_ref, "iou_thr": iou_thr}


def batch_invariance(predict_batch: PredictBatch, images: Sequence[np.ndarray], box_tol: float = 0.5,
                     score_tol: float = 1e-3, max_batch: int = MAX_BATCH) -> dict:
    """Batches of 1..max_batch images (cycling through `images`, so every batch size puts images at every
    position) vs each image alone: same classes and count, boxes within box_tol px, scores within score_tol."""
    if not images:
        return {"ok": False, "detail": "no images"}
    alone = [predict_batch([im])[0] for im in images]
    worst_box = worst_score = 0.0
    for size in range(1, max_batch + 1):
        idx = [(size + k) % len(images) for k in range(size)]
        for pos, (i, det) in enumerate(zip(idx, predict_batch([images[i] for i in idx]))):
            ref = alone[i]
            if len(det) != len(ref) or not np.array_equal(np.sort(det.labels), np.sort(ref.labels)):
                return {"ok": False, "detail": f"batch size {size}, position {pos}: {len(det)} detections, "
                                               f"{len(ref)} alone", "batch_sizes": list(range(1, size + 1))}
            if len(det):
                a, b = np.argsort(-det.scores, kind="stable"), np.argsort(-ref.scores, kind="stable")
                worst_box = max(worst_box, float(np.abs(det.boxes[a] - ref.boxes[b]).max()))
                worst_score = max(worst_score, float(np.abs(det.scores[a] - ref.scores[b]).max()))
    ok = worst_box <= box_tol and worst_score <= score_tol
    return {"ok": ok, "batch_sizes": list(range(1, max_batch + 1)), "images": len(images),
            "max_box_diff_px": round(worst_box, 5), "max_score_diff": round(worst_score, 7),
            "detail": "results independent of batch size and position" if ok else
            f"boxes differ by up to {worst_box:.3g} px, scores by {worst_score:.3g}"}


def val_ap(predict_batch: PredictBatch, val: ValSplit | None, batch_size: int = 1) -> float | None:
    if val is None or not val.gt.get("images"):
        return None
    from cvpipe.evaluation.engine import evaluate

    ev, _ = evaluate(predict_batch, val.gt, val.images_dir, val.classes, batch_size=batch_size,
                     desc="model_pack: certifying", label_map=val.label_map)
    return round(float(ev.stats["AP"]), 5)


def certify(predict_at: Callable[[float | None], PredictBatch], reference: Sequence[Detections],
            images: Sequence[np.ndarray], val: ValSplit | None, reference_name: str) -> dict:
    """The certificate of one variant. `predict_at(score_thr)` gives its batch predictor at a threshold
    (COCO AP wants the whole curve: 0.001; box matching uses the serving threshold, as `reference` does)."""
    serving = predict_at(None)
    pred = [serving([im])[0] for im in images]
    return {"ap_val": val_ap(predict_at(0.001), val), "val_images": len(val.gt["images"]) if val else 0,
            "match": {**match_f1(pred, reference), "reference": reference_name, "images": len(images)},
            "batch": batch_invariance(serving, images[:MAX_BATCH])}
