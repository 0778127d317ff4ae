"""INT8 vs FP32 for YOLOX-Nano: latency (one thread, batch 1) and COCO AP on the val2017 dev images, for the
ONNX Runtime quantization modes (dynamic; static with the head's output convs in float; static with model_pack's
recipe: head, stem and depthwise convs in float). The runtime comparison of every packed variant, OpenVINO
included, is benchmarks/bench_runtimes.py.

    .venv/bin/python benchmarks/bench_quantize.py [--modes dynamic static recipe] [--calib 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cvpipe.evaluation.coco import evaluate_detections
from cvpipe.export.onnx import append_decode
from cvpipe.export.quantize import quantize_onnx
from cvpipe.export.variants import KEEP_FLOAT_GROUPS, keep_float_nodes
from cvpipe.inference.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import read_image

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
DEV = Path("/work/shared/data/coco_real/dev")
if not DEV.is_dir():
    DEV = REPO / "examples" / "coco_sample"


def evaluate(pred: Predictor, coco: dict, images: list[dict]) -> tuple[float, float, float]:
    results, times = [], []
    for im in images:
        img = read_image(DEV / "images" / im["file_name"])
        x, r = pred.preprocess(img)
        t = time.perf_counter()
        decoded = pred.run(x[None])[0]
        times.append(time.perf_counter() - t)
        det = pred.postprocess(decoded, r, img.shape[:2], 0.001)
        for box, s, lab in zip(det.boxes, det.scores, det.labels):
            x1, y1, x2, y2 = map(float, box)
            results.append({"image_id": im["id"], "category_id": int(COCO_CATEGORY_IDS[int(lab)]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    ids = {im["id"] for im in images}
    gt = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    stats = evaluate_detections(gt, results)["stats"]
    return stats["AP"], stats["AP50"], float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=["dynamic", "static", "recipe"])
    ap.add_argument("--calib", type=int, default=64, help="calibration images (train2017 ones when present)")
    args = ap.parse_args()
    coco = json.loads((DEV / "annotations.json").read_text())
    val = [im for im in coco["images"] if "val2017" in str(im.get("coco_url", ""))] or coco["images"]
    rest = [im for im in coco["images"] if im not in val] or val
    calib = [DEV / "images" / im["file_name"] for im in rest[: args.calib]]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        import onnx

        decoded = Path(tmp) / "nano.onnx"  # the decoded graph, as model_pack packs it
        onnx.save(append_decode(onnx.load(str(NANO)), (416, 416)), str(decoded))
        models = {"fp32": decoded}
        for mode in args.modes:
            keep = keep_float_nodes(decoded, KEEP_FLOAT_GROUPS) if mode == "recipe" else "head"
            models[f"int8-{mode}"] = quantize_onnx(decoded, Path(tmp) / f"{mode}.onnx",
                                                   "dynamic" if mode == "dynamic" else "static", calib, (416, 416),
                                                   keep_float=keep)
        for name, path in models.items():
            pred = Predictor(path, COCO_CLASS_NAMES, COCO_CATEGORY_IDS, (416, 416))
            a, a50, ms = evaluate(pred, coco, val)
            rows[name] = {"AP": round(a, 4), "AP50": round(a50, 4), "median_ms": round(ms, 2),
                          "MB": round(Path(path).stat().st_size / 2**20, 2)}
            print(name, rows[name], flush=True)
    base = rows["fp32"]
    for r in rows.values():
        r["speedup"] = round(base["median_ms"] / r["median_ms"], 2)
        r["AP_drop"] = round(base["AP"] - r["AP"], 4)
    print(json.dumps({"images": len(val), "calibration_images": len(calib), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
