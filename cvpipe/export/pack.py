"""Write a packed model dir (the `model` entity of model_pack): the contract every consumer reads.

    model.onnx       decoded outputs [B, N, 5+C] (dynamic batch; a bring-your-own graph may keep batch 1)
    model_e2e.onnx   decoding + per-class NMS inside (output `detections` [K, 7]; see cvpipe.export.onnx)
    model.json       name, run_id, source run ids, input size, classes, input contract, outputs, thresholds, metrics
    test_image.<ext> an image to smoke-test the model / service with
    reference.json   the Predictor's prediction on it, exactly what POST /predict returns for it
    README.md        this layout, for whoever finds the folder
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Sequence

from cvpipe.vision import decode_image
from cvpipe.inference.predictor import Predictor

INPUT_CONTRACT = {"name": "images", "shape": ["batch", 3, "H", "W"], "dtype": "float32", "channels": "BGR",
                  "range": "0-255 (no mean/std)", "resize": "letterbox: one scale r = min(H/h, W/w), image in "
                  "the top-left corner", "pad_value": 114}
OUTPUTS = {
    "model.onnx": {"name": "output", "shape": ["batch", "N", "5+C"],
                   "layout": "cx, cy, w, h (input pixels), objectness, C class probabilities"},
    "model_e2e.onnx": {"name": "detections", "shape": ["K", 7],
                       "layout": "batch index, x1, y1, x2, y2 (input pixels; divide by r), score, class index; "
                                 "score = obj * best class prob, per-class NMS inside"},
}

README = """# Packed cvpipe detection model `{name}` (run `{run_id}`)

| file | what |
|---|---|
| `model.onnx` | YOLOX graph, input `images` float32 [B,3,{h},{w}], output `output` [B,N,5+C] decoded: cx, cy, w, h in input pixels, objectness, class probabilities. Batch: {batch}. |
| `model_e2e.onnx` | same graph + score = obj x best class prob + per-class NMS (ONNX NonMaxSuppression, IoU {nms_thr}, score >= {score_thr}); output `detections` [K,7] = batch index, x1, y1, x2, y2 (input pixels), score, class index. {e2e_note} |
| `model.json` | classes ({n_classes}), category ids, input size, thresholds, source runs, metrics at pack time |
| `test_image.*` | a test image; `reference.json` is the prediction on it (what `POST /predict` must return) |

Input contract: BGR, 0-255 float (no normalisation), letterbox to {h}x{w}: scale r = min({h}/h, {w}/w), resized
image in the TOP-LEFT corner, rest filled with 114. Boxes in original pixels = input-pixel boxes / r.

```python
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import decode_image
pred = Predictor.from_dir("{dirname}")
det = pred.predict(decode_image(open("test_image.jpg", "rb").read()))
print(pred.to_json(det))
```
"""


def write_model_dir(out: str | Path, *, onnx_path: str | Path, class_names: Sequence[str],
                    category_ids: Sequence[int] | None, input_size: Sequence[int], test_image: str | Path | None,
                    e2e_path: str | Path | None = None, name: str = "cvpipe-detector", run_id: str | None = None,
                    source_run_ids: dict | None = None, score_thr: float = 0.25, nms_thr: float = 0.45,
                    max_det: int = 300, metrics: dict | None = None, extra: dict | None = None) -> dict:
    """Fill `out` with the packed model; returns model.json's content (reference detections included)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    class_names = [str(c) for c in class_names]
    category_ids = [int(c) for c in category_ids] if category_ids is not None else list(range(len(class_names)))
    if len(category_ids) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
    shutil.copyfile(onnx_path, out / "model.onnx")
    if e2e_path is not None:
        shutil.copyfile(e2e_path, out / "model_e2e.onnx")
    meta = {
        "name": name, "run_id": run_id, "source_run_ids": source_run_ids or {},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input_size": [int(input_size[0]), int(input_size[1])], "class_names": class_names,
        "category_ids": category_ids, "input": INPUT_CONTRACT,
        "outputs": {k: v for k, v in OUTPUTS.items() if k == "model.onnx" or e2e_path is not None},
        "onnx": "model.onnx", "score_thr": float(score_thr), "nms_thr": float(nms_thr), "max_det": int(max_det),
        "metrics": metrics or {}, **(extra or {}),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    predictor = Predictor.from_dir(out)
    meta["batch"] = "dynamic" if predictor.fixed_batch is None else int(predictor.fixed_batch)
    if test_image is not None:
        test_image = Path(test_image)
        ext = test_image.suffix.lower() or ".jpg"
        shutil.copyfile(test_image, out / f"test_image{ext}")
        data = test_image.read_bytes()
        image = decode_image(data)
        det = predictor.predict(image)
        reference = {"detections": predictor.to_json(det),
                     "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
                     "model": {"run_id": run_id}}
        (out / "reference.json").write_text(json.dumps(reference, indent=2))
        meta["test_image"] = f"test_image{ext}"
        meta["reference_detections"] = len(det)
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    h, w = meta["input_size"]
    (out / "README.md").write_text(README.format(
        name=name, run_id=run_id, h=h, w=w, batch=meta["batch"], nms_thr=nms_thr, score_thr=score_thr,
        n_classes=len(class_names), dirname=out.name,
        e2e_note="" if e2e_path is not None else "(not packed for this model)"))
    return meta
