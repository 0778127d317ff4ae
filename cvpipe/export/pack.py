"""Write a packed model dir (the `model` entity of model_pack): the contract every consumer reads.

    model.onnx       decoded outputs [B, N, 5+C] (dynamic batch; a bring-your-own graph may keep batch 1)
    model_e2e.onnx   decoding + per-class NMS inside (output `detections` [K, 7]; see cvpipe.export.onnx)
    model_int8.onnx, model_openvino.{xml,bin}, model_openvino_int8.{xml,bin}
                     the certified variants (cvpipe.export.variants), where packed
    model.json       name, run_id, source run ids, input size, classes, input contract, outputs, thresholds,
                     metrics, variants with their certificates, default variant, refused variants
    test_image.<ext> an image to smoke-test the model / service with
    reference.json   the default variant's prediction on it, exactly what POST /predict returns for it (other
                     variants' own predictions: model.json variants.<name>.reference)
    README.md        this layout, for whoever finds the folder

model.json is written only through PackedModel.save (the one writer; PackedModel.load the one reader).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Sequence

from cvpipe.inference.packed import PackedModel
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import decode_image

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
| `model.json` | classes ({n_classes}), category ids, input size, thresholds, source runs, metrics at pack time, variants (runtime / precision) with their certificates |
{variant_rows}
| `test_image.*` | a test image; `reference.json` is the prediction on it (what `POST /predict` must return) |

Input contract: BGR, 0-255 float (no normalisation), letterbox to {h}x{w}: scale r = min({h}/h, {w}/w), resized
image in the TOP-LEFT corner, rest filled with 114. Boxes in original pixels = input-pixel boxes / r.

```python
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import decode_image
pred = Predictor.from_dir("{dirname}")   # default variant: {default}; variant="..." for another
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
        "onnx": "model.onnx", "e2e": "model_e2e.onnx" if e2e_path is not None else None,
        "variants": {"fp32": {"backend": "onnxruntime", "precision": "fp32", "files": ["model.onnx"]}},
        "default_variant": "fp32", "score_thr": float(score_thr), "nms_thr": float(nms_thr), "max_det": int(max_det),
        "metrics": metrics or {}, **(extra or {}),
    }
    if test_image is not None:
        test_image = Path(test_image)
        ext = test_image.suffix.lower() or ".jpg"
        shutil.copyfile(test_image, out / f"test_image{ext}")
        meta["test_image"] = f"test_image{ext}"
    fixed_batch = Predictor.from_dir(PackedModel.save(out, meta), "fp32").fixed_batch
    meta["batch"] = "dynamic" if fixed_batch is None else int(fixed_batch)
    return _write_references(PackedModel.save(out, meta))


def set_variants(model_dir: str | Path, variants: dict, default_variant: str, refused: dict,
                 default_choice: dict | None = None) -> dict:
    """Record the certified variants (their files already in the dir) and the default; rewrites the
    references (reference.json is the default variant's output) and README. Returns model.json's content."""
    meta = dict(PackedModel.load(model_dir).meta)
    meta.update(variants=variants, default_variant=default_variant, refused_variants=refused,
                default_choice=default_choice or {})
    return _write_references(PackedModel.save(model_dir, meta))


def _reference(predictor: Predictor, image, run_id) -> dict:
    return {"detections": predictor.to_json(predictor.predict(image)),
            "image": {"width": int(image.shape[1]), "height": int(image.shape[0])}, "model": {"run_id": run_id}}


def _write_references(packed: PackedModel) -> dict:
    """reference.json from the default variant; every other variant's own prediction inside model.json (an
    INT8 variant's boxes differ a little from fp32's, and a service checks the variant it runs)."""
    meta = dict(packed.meta)
    if packed.test_image is not None:
        image = decode_image(packed.test_image.read_bytes())
        refs = {name: _reference(Predictor.from_dir(packed, name), image, packed.run_id) for name in packed.variants}
        default = refs[packed.default_variant]
        (packed.dir / "reference.json").write_text(json.dumps(default, indent=2))
        meta["reference_detections"] = len(default["detections"])
        meta["variants"] = {n: {**v, "reference": refs[n]["detections"]} for n, v in meta["variants"].items()}
    packed = PackedModel.save(packed.dir, meta)
    _write_readme(packed)
    return packed.meta


def _write_readme(packed: PackedModel) -> None:
    meta = packed.meta
    h, w = packed.input_size
    rows = "".join(f"| `{'`, `'.join(v.files)}` | variant `{n}`: {v.backend}, {meta['variants'][n].get('precision')}"
                   f"{' (default)' if n == packed.default_variant else ''} |\n"
                   for n, v in packed.variants.items() if n != "fp32")
    (packed.dir / "README.md").write_text(README.format(
        name=meta["name"], run_id=meta["run_id"], h=h, w=w, batch=meta.get("batch"), nms_thr=meta["nms_thr"],
        score_thr=meta["score_thr"], n_classes=len(meta["class_names"]), dirname=packed.dir.name,
        e2e_note="" if meta.get("e2e") else "(not packed for this model)", variant_rows=rows,
        default=packed.default_variant))
