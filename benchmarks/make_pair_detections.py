"""Detections of real checkpoints on the same held-out images, for the gate's real-pair noise
(bench_gate_power.py --pair).

Each packed model (a model_pack run's folder) and, optionally, Megvii's pretrained YOLOX-Nano ONNX runs on the
images of --data that are not in --exclude (e.g. the fine-tunes' own training data, examples/coco_sample), at
score threshold 0.001, NMS 0.65, 100 boxes (a mAP evaluation). The ground truth is cut to those images and to the
packed models' classes; the pretrained model's other classes are dropped.

    .venv/bin/python benchmarks/make_pair_detections.py --data ../shared/data/coco_real/dev \
        --exclude examples/coco_sample/annotations.json --packed s0=RUN_DIR --packed s1=RUN_DIR \
        --nano weights/yolox_nano/yolox_nano.onnx --out /tmp/pairs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_eval import nano_detections

from cvpipe.evaluation.engine import predict_split
from cvpipe.inference.packed import PackedModel
from cvpipe.inference.predictor import Predictor


def held_out_gt(data: Path, exclude: Path | None, category_ids: set[int]) -> dict:
    gt = json.loads((data / "annotations.json").read_text())
    seen = set() if exclude is None else {i["id"] for i in json.loads(exclude.read_text())["images"]}
    images = [i for i in gt["images"] if i["id"] not in seen]
    keep = {i["id"] for i in images}
    return {"images": images, "categories": [c for c in gt["categories"] if c["id"] in category_ids],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep and a["category_id"] in category_ids]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--exclude", type=Path, help="COCO annotations whose images are left out")
    ap.add_argument("--packed", action="append", default=[], help="NAME=DIR of a packed model (repeatable)")
    ap.add_argument("--nano", type=Path, help="also Megvii's pretrained YOLOX-Nano ONNX, as 'pretrained'")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    models = {name: PackedModel.load(path) for name, path in (p.split("=", 1) for p in args.packed)}
    cats = set.intersection(*(set(m.classes.category_ids) for m in models.values())) if models else set()
    gt = held_out_gt(args.data, args.exclude, cats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gt.json").write_text(json.dumps(gt))
    for name, packed in models.items():
        pred = Predictor.from_dir(packed, variant="fp32", score_thr=0.001, nms_thr=0.65, max_det=100,
                                  intra_op_threads=2)
        results = predict_split(pred.predict_batch, gt, args.data / "images", packed.classes, desc=name).results
        (args.out / f"{name}.json").write_text(json.dumps([r for r in results if r["category_id"] in cats]))
    if args.nano is not None:
        full = json.loads((args.data / "annotations.json").read_text())
        dets = nano_detections({**gt, "categories": full["categories"]}, args.data / "images", args.nano, 2)
        (args.out / "pretrained.json").write_text(json.dumps([d for d in dets if d["category_id"] in cats]))


if __name__ == "__main__":
    main()
