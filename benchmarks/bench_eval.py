"""COCO bbox evaluation time: faster-coco-eval (what cvpipe uses) vs pycocotools, on the same detections.

Detections: Megvii's YOLOX-Nano ONNX on every image of the bundled COCO dev set (366 images), score
threshold 0.001 and up to 100 boxes per image, as a mAP evaluation uses. Each evaluator is timed end to end
(index the ground truth, load the results, evaluate, accumulate, summarize), best of --repeats; the metrics
of both are checked to agree to 1e-6.

    .venv/bin/python benchmarks/bench_eval.py
    .venv/bin/python benchmarks/bench_eval.py --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from cvpipe.evaluation.coco import STAT_NAMES, coco_evaluate
from cvpipe.vision import decode_raw, letterbox, postprocess
from cvpipe.progress import track

REPO = Path(__file__).resolve().parents[1]


def nano_detections(gt: dict, images_dir: Path, onnx_path: Path, threads: int) -> list[dict]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    size = tuple(sess.get_inputs()[0].shape[2:])
    cat_ids = sorted(c["id"] for c in gt["categories"])
    dets = []
    for img in track(gt["images"], "nano detections"):
        bgr = cv2.imread(str(images_dir / img["file_name"]))
        x, r = letterbox(bgr, size)
        raw = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]
        d = postprocess(decode_raw(raw, size), r, 0.001, 0.65, 100, bgr.shape[:2])
        for (x1, y1, x2, y2), s, lab in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            dets.append({"image_id": img["id"], "category_id": cat_ids[lab], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": s})
    return dets


def pycocotools_eval(gt: dict, dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/coco_real/dev")
    ap.add_argument("--onnx", type=Path, default=REPO / "weights/yolox_nano/yolox_nano.onnx")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads for making the detections")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    gt = json.loads((args.data / "annotations.json").read_text())
    dets = nano_detections(gt, args.data / "images", args.onnx, args.threads)

    # both get private copies (loadRes writes into the dicts); copying is outside the timed part
    def timed(fn) -> tuple[float, np.ndarray]:
        best, out = float("inf"), None
        for _ in range(args.repeats):
            g, d = copy.deepcopy(gt), copy.deepcopy(dets)
            t0 = time.perf_counter()
            out = fn(g, d)
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_fast, ev = timed(lambda g, d: coco_evaluate(g, d))
    t_ref, ref_stats = timed(pycocotools_eval)
    fast_stats = np.asarray([ev.stats[n] for n in STAT_NAMES])
    max_diff = float(np.abs(fast_stats - ref_stats).max())

    res = {"images": len(gt["images"]), "gt_boxes": len(gt["annotations"]), "detections": len(dets),
           "faster_coco_eval_s": t_fast, "pycocotools_s": t_ref, "speedup": t_ref / t_fast,
           "AP": ev.stats["AP"], "AP50": ev.stats["AP50"], "max_stat_diff": max_diff,
           "repeats": args.repeats, "cpu": platform.processor() or platform.machine()}
    table = Table(title=f"COCO bbox evaluation, best of {args.repeats}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for k in ("images", "gt_boxes", "detections", "faster_coco_eval_s", "pycocotools_s", "speedup", "AP", "AP50",
              "max_stat_diff"):
        table.add_row(k, f"{res[k]:.4g}" if isinstance(res[k], float) else str(res[k]))
    Console().print(table)
    if max_diff > 1e-6:
        raise SystemExit(f"the evaluators disagree: max stat difference {max_diff}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
