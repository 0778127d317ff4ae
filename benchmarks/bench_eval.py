"""COCO bbox evaluation time: hotcoco (what cvpipe uses) vs faster-coco-eval vs pycocotools, on the same
detections; then the promotion gate's paired bootstrap (per-image matching once, --resamples resamples).

Detections: Megvii's YOLOX-Nano ONNX on every image of the COCO dev set (366 images), score threshold 0.001
and up to 100 boxes per image, as a mAP evaluation uses. --images N draws a test set of N of them with
replacement (each a new image id), e.g. 5000 for a val2017-sized one. Each evaluator is timed end to end
(index the ground truth, load the results, evaluate, accumulate, summarize), best of --repeats; hotcoco's 12
numbers must equal pycocotools' exactly, faster-coco-eval's to 1e-6.

The gate's row (--resamples, default 1,000): two models (the second the same detections with independent score
noise and misses) evaluated with hotcoco, matched once, paired resamples; the fast path against the old one
(benchmarks/legacy_bootstrap.py) in the same run, and the fast path's AP per class and IoU threshold against
hotcoco's to 1e-12.

    .venv/bin/python benchmarks/bench_eval.py
    .venv/bin/python benchmarks/bench_eval.py --images 5000 --repeats 1 --json out.json
    .venv/bin/python benchmarks/bench_eval.py --images 5000 --gate-only --json gate.json   # the gate's row only
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from cvpipe.evaluation.coco import STAT_NAMES, coco_evaluate, coco_evaluate_models
from cvpipe.progress import track
from cvpipe.vision import decode_raw, letterbox, postprocess

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


def hotcoco_eval(gt: dict, dets: list[dict]) -> np.ndarray:
    ev = coco_evaluate(gt, dets)
    return np.asarray([ev.stats[n] for n in STAT_NAMES])


def faster_coco_eval_eval(gt: dict, dets: list[dict]) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = {"info": {}, **gt}
        cg.createIndex()
        ev = COCOeval_faster(cg, cg.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def draw_test_set(gt: dict, dets: list[dict], n: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """n images drawn with replacement from gt (each a new id), with their annotations and detections."""
    if n <= 0 or n == len(gt["images"]):
        return gt, dets
    images = sorted(gt["images"], key=lambda i: i["id"])
    source = np.random.default_rng(seed).integers(0, len(images), n)
    anns, found = {}, {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    for d in dets:
        found.setdefault(d["image_id"], []).append(d)
    out_gt = {"images": [], "annotations": [], "categories": gt["categories"]}
    out_dets = []
    for new_id, k in enumerate(source, start=1):
        old = images[k]["id"]
        out_gt["images"].append({**images[k], "id": new_id})
        out_gt["annotations"] += [{**a, "id": len(out_gt["annotations"]) + j + 1, "image_id": new_id}
                                  for j, a in enumerate(anns.get(old, []))]
        out_dets += [{**d, "image_id": new_id} for d in found.get(old, [])]
    return out_gt, out_dets


def second_model(dets: list[dict], seed: int = 1) -> list[dict]:
    """The same detections with independent errors: each score times exp(0.2 N(0, 1)), 3 % of them dropped."""
    rng = np.random.default_rng(seed)
    noise, keep = np.exp(0.2 * rng.standard_normal(len(dets))), rng.random(len(dets)) >= 0.03
    return [{**d, "score": float(d["score"] * z)} for d, z, k in zip(dets, noise, keep) if k]


def time_gate(gt: dict, dets: list[dict], resamples: int, baseline: bool) -> dict:
    """Seconds of the gate on two models' detections (COCO results as dicts, as model_eval has them): both
    evaluated with hotcoco (the report's numbers; on one ground-truth index, a thread each), both matched once,
    `resamples` paired resamples. The fast
    path (cvpipe.evaluation) against the path before it (benchmarks/legacy_bootstrap.py, hotcoco fed dicts),
    in the same run; and the fast path's AP per class and IoU threshold against hotcoco's precision array."""
    from cvpipe.evaluation.bootstrap import bootstrap_matches, full_set_aps, match_pair, resample_weights
    from cvpipe.evaluation.coco import results_array

    models = [dets, second_model(dets)]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    coco_evaluate(gt, models[0][:10])  # imports and first calls outside the timed part, for both paths
    t0 = time.perf_counter()
    few = {**gt, "images": gt["images"][:20]}  # compiles the kernels once (numba caches them on disk)
    w_ids, w_cand, w_ref = match_pair(few, *(results_array(d[:2000]) for d in models))
    bootstrap_matches(w_ids, w_cand, w_ref, names, 10)
    warm_s = time.perf_counter() - t0
    stamps = [(time.perf_counter(), time.process_time())]  # CPU seconds of all threads: under load, wall says little
    arrays = [results_array(d) for d in models]
    stamps.append((time.perf_counter(), time.process_time()))
    evals = coco_evaluate_models(gt, arrays)  # one ground-truth index, a thread per model
    stamps.append((time.perf_counter(), time.process_time()))
    ids, cand, ref = match_pair(gt, *arrays)
    stamps.append((time.perf_counter(), time.process_time()))
    boot = bootstrap_matches(ids, cand, ref, names, resamples)
    stamps.append((time.perf_counter(), time.process_time()))
    worst = 0.0
    for cat, m in cand.items():
        p = evals[0].precision[:, :, evals[0].cat_ids.index(cat), 0, -1]
        if (p > -1).any():
            worst = max(worst, float(np.abs(full_set_aps(m) - p.mean(axis=1)).max()))
    res: dict = {}
    for k, stage in enumerate(("results_array", "evaluate", "match", "resamples")):
        res[f"fast_{stage}_s"] = stamps[k + 1][0] - stamps[k][0]
        res[f"fast_{stage}_cpu_s"] = stamps[k + 1][1] - stamps[k][1]
    res |= {"fast_total_s": stamps[-1][0] - stamps[0][0], "fast_cpu_s": stamps[-1][1] - stamps[0][1],
            "fast_max_ap_diff_vs_coco": worst, "kernels_first_call_s": warm_s, "gate_delta": boot["delta"],
            "gate_se": boot["std"]}
    if baseline:
        import legacy_bootstrap as legacy

        c0 = time.process_time()
        t0 = time.perf_counter()
        for d in models:
            coco_evaluate_dicts(gt, d)
        t1 = time.perf_counter()
        (_, cand_old), (_, ref_old) = (legacy.match_per_image(gt, d) for d in models)
        t2 = time.perf_counter()
        weights = np.concatenate([np.ones((1, len(ids))), resample_weights(len(ids), resamples, 0)])
        legacy.class_aps(cand_old, weights), legacy.class_aps(ref_old, weights)
        t3 = time.perf_counter()
        res |= {"old_evaluate_s": t1 - t0, "old_match_s": t2 - t1, "old_resamples_s": t3 - t2, "old_total_s": t3 - t0,
                "old_cpu_s": time.process_time() - c0, "speedup": (t3 - t0) / res["fast_total_s"]}
    return res


def coco_evaluate_dicts(gt: dict, dets: list[dict]) -> None:
    """hotcoco as cvpipe called it before: the results as a list of dicts."""
    import hotcoco

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = hotcoco.COCO({"info": {}, **gt})
        ev = hotcoco.COCOeval(coco_gt, coco_gt.load_res([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/coco_real/dev")
    ap.add_argument("--onnx", type=Path, default=REPO / "weights/yolox_nano/yolox_nano.onnx")
    ap.add_argument("--cache", type=Path, help="detections JSON (made when missing)")
    ap.add_argument("--images", type=int, default=0, help="a test set of this many images drawn from --data")
    ap.add_argument("--resamples", type=int, default=1000, help="for the gate's bootstrap (0: skip it)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the gate's old path (minutes at 5,000 images)")
    ap.add_argument("--gate-only", action="store_true", help="skip timing the three evaluators")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads for making the detections")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    gt = json.loads((args.data / "annotations.json").read_text())
    if args.cache is not None and args.cache.is_file():
        dets = json.loads(args.cache.read_text())
    else:
        dets = nano_detections(gt, args.data / "images", args.onnx, args.threads)
        if args.cache is not None:
            args.cache.write_text(json.dumps(dets))
    gt, dets = draw_test_set(gt, dets, args.images)

    # each gets private copies (loadRes writes into the dicts); copying is outside the timed part
    def timed(fn) -> tuple[float, np.ndarray]:
        best, out = float("inf"), None
        for _ in range(args.repeats):
            g, d = copy.deepcopy(gt), copy.deepcopy(dets)
            t0 = time.perf_counter()
            out = fn(g, d)
            best = min(best, time.perf_counter() - t0)
        return best, out

    res: dict = {"images": len(gt["images"]), "gt_boxes": len(gt["annotations"]), "detections": len(dets),
                 "resamples": args.resamples, "cpu": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}
    if not args.gate_only:
        t_hot, hot = timed(hotcoco_eval)
        t_fce, fce = timed(faster_coco_eval_eval)
        t_ref, ref = timed(pycocotools_eval)
        res |= {"hotcoco_s": t_hot, "faster_coco_eval_s": t_fce, "pycocotools_s": t_ref,
                "hotcoco_vs_pycocotools": t_ref / t_hot, "hotcoco_vs_faster_coco_eval": t_fce / t_hot,
                "AP": float(hot[0]), "AP50": float(hot[1]), "hotcoco_bit_identical": bool((hot == ref).all()),
                "fce_max_diff": float(np.abs(fce - ref).max()), "repeats": args.repeats}
        if not res["hotcoco_bit_identical"] or res["fce_max_diff"] > 1e-6:
            raise SystemExit(f"the evaluators disagree: {hot} / {fce} vs pycocotools {ref}")
    if args.resamples:
        res |= time_gate(gt, dets, args.resamples, baseline=not args.no_baseline)
        if res["fast_max_ap_diff_vs_coco"] > 1e-12:
            raise SystemExit(f"the fast path's AP is not COCO's: {res['fast_max_ap_diff_vs_coco']}")
    res["load_avg_1min_end"] = os.getloadavg()[0]
    table = Table(title=f"COCO bbox evaluation (best of {args.repeats}) and the promotion gate", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for k, v in res.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
