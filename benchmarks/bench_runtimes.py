"""Runtime / precision variants vs ONNX Runtime fp32, on the same images in one run, as ratios.

    .venv/bin/python benchmarks/bench_runtimes.py [--models s640 nano416] [--rounds 5] [--ap-images 137]

For every model: the packed variants (fp32 ORT, int8 ORT QDQ, openvino fp32 IR, openvino_int8 IR) built
exactly as model_pack builds them (cvpipe.export.variants), then
- latency at concurrency 1: one Predictor (1 thread), whole predict (letterbox, model, NMS) per image;
- throughput at concurrency 4: four threads calling one shared Predictor (1 intra-op thread per call), as the
  service's model threads do, over the images;
- `openvino_int8 pinned`: the same IR compiled as cvpipe did before issue 28 (LATENCY hint, 1 stream, CPU
  pinning on), to show in the same run what one stream and pinning cost at concurrency 4;
the variants interleaved round by round (a busy machine slows them alike), the ratio vs fp32 taken per round,
and its median and spread (min..max over rounds) reported, with the load average at the start and end.
- AP (COCO, val2017 images of the dev set) where the weights are trained: Megvii's YOLOX-Nano. yolox-s runs
  with random weights (speed only): there is no trained yolox-s in the repository.
INT8 is calibrated on 64 train2017 images of the dev set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from coco_data import COCO_DEV, NANO_ONNX  # noqa: E402

from cvpipe.evaluation.engine import evaluate  # noqa: E402
from cvpipe.export.variants import KEEP_FLOAT_GROUPS, keep_float_nodes  # noqa: E402
from cvpipe.inference.predictor import Predictor  # noqa: E402
from cvpipe.vision import ClassMap, read_image  # noqa: E402

VARIANTS = ("fp32", "int8", "openvino", "openvino_int8", "openvino_int8 pinned")
BACKEND = {"fp32": "onnxruntime", "int8": "onnxruntime", "openvino": "openvino", "openvino_int8": "openvino",
           "openvino_int8 pinned": "openvino"}
PINNED = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
          "INFERENCE_PRECISION_HINT": "f32"}


def build_models(name: str, work: Path, calib: list[Path]) -> tuple[dict, tuple[int, int], bool]:
    """{variant: model file}, input size, trained weights?"""
    import onnx

    from cvpipe.export.onnx import append_decode
    from cvpipe.export.quantize import quantize_onnx
    from cvpipe.inference.runtimes import onnx_to_openvino

    fp32 = work / f"{name}.onnx"
    if name == "nano416":
        size, trained = (416, 416), True
        onnx.save(append_decode(onnx.load(str(NANO_ONNX)), size), str(fp32))
    else:  # e.g. s640: our YOLOX at that scale and size, random weights
        import torch

        from cvpipe.export.onnx import export_onnx
        from cvpipe.models.yolox import build_yolox

        scale, side = name.rstrip("0123456789"), int(name.lstrip("abcdefghijklmnopqrstuvwxyz"))
        size, trained = (side, side), False
        torch.manual_seed(0)
        export_onnx(build_yolox(scale, 80), fp32, size)
    qdq = quantize_onnx(fp32, work / f"{name}_int8.onnx", "static", calib, size,
                        keep_float=keep_float_nodes(fp32, KEEP_FLOAT_GROUPS))
    ov_int8 = onnx_to_openvino(qdq, work / f"{name}_ov_int8.xml")
    return {"fp32": fp32, "int8": qdq, "openvino": onnx_to_openvino(fp32, work / f"{name}_ov.xml"),
            "openvino_int8": ov_int8, "openvino_int8 pinned": ov_int8}, size, trained


def predictor(path: Path, variant: str, classes: ClassMap, size, score_thr: float = 0.25) -> Predictor:
    p = Predictor(path, classes.names, classes.category_ids, size, backend=BACKEND[variant], variant=variant,
                  score_thr=score_thr)
    if variant.endswith("pinned"):  # the configuration before issue 28, for comparison in the same run
        import openvino as ov

        p.runtime.compiled = ov.Core().compile_model(str(path), "CPU", PINNED)
    return p


def latency_round(preds: dict, images: list) -> dict[str, float]:
    out = {}
    for v, p in preds.items():
        t = []
        for im in images:
            t0 = time.perf_counter()
            p.predict(im)
            t.append(time.perf_counter() - t0)
        out[v] = statistics.median(t) * 1000
    return out


def throughput_round(preds: dict, images: list, pool: ThreadPoolExecutor, concurrency: int) -> dict[str, float]:
    out = {}
    for v, p in preds.items():
        t0 = time.perf_counter()
        list(pool.map(lambda _, p=p: [p.predict(im) for im in images], range(concurrency)))
        out[v] = concurrency * len(images) / (time.perf_counter() - t0)
    return out


def ratios(rounds: list[dict], higher_is_better: bool) -> dict:
    """Per variant: median value and ratio vs fp32 (per round: median, min, max)."""
    res = {}
    for v in rounds[0]:
        r = [(x[v] / x["fp32"]) if higher_is_better else (x["fp32"] / x[v]) for x in rounds]
        res[v] = {"median": round(statistics.median(x[v] for x in rounds), 2),
                  "ratio_vs_fp32": round(statistics.median(r), 2), "spread": [round(min(r), 2), round(max(r), 2)]}
    return res


def ap_of(path: Path, variant: str, classes: ClassMap, size, gt: dict) -> float:
    p = predictor(path, variant, classes, size, score_thr=0.001)
    ev, _ = evaluate(p.predict_batch, gt, COCO_DEV / "images", classes, desc=f"AP {variant}")
    return round(float(ev.stats["AP"]), 4)


def bench_model(name: str, args, coco: dict, classes: ClassMap, work: Path) -> dict:
    val = [i for i in coco["images"] if "val2017" in i.get("coco_url", "")] or coco["images"]
    train = [i for i in coco["images"] if i not in val] or val
    calib = [COCO_DEV / "images" / i["file_name"] for i in train[:64]]
    models, size, trained = build_models(name, work, calib)
    images = [read_image(COCO_DEV / "images" / i["file_name"]) for i in val[:args.images]]
    preds = {v: predictor(models[v], v, classes, size) for v in VARIANTS}
    load = [round(os.getloadavg()[0], 1)]
    lat, thr = [], []
    with ThreadPoolExecutor(args.concurrency) as pool:
        throughput_round(preds, images[:1], pool, args.concurrency)  # warm-up, one infer request per thread
        for _ in range(args.rounds):
            lat.append(latency_round(preds, images))
            thr.append(throughput_round(preds, images, pool, args.concurrency))
    load.append(round(os.getloadavg()[0], 1))
    result = {"input_size": list(size), "weights": "Megvii COCO (trained)" if trained else "random",
              "load_average_start_end": load,
              "latency_ms_c1": ratios(lat, higher_is_better=False),
              f"throughput_img_s_c{args.concurrency}": ratios(thr, higher_is_better=True)}
    if trained and args.ap_images:
        ids = {i["id"] for i in val[:args.ap_images]}
        gt = {**coco, "images": val[:args.ap_images], "annotations": [a for a in coco["annotations"]
                                                                      if a["image_id"] in ids]}
        aps = {v: ap_of(models[v], v, classes, size, gt) for v in VARIANTS if not v.endswith("pinned")}
        result["AP_val"] = {v: {"AP": a, "drop_points": round((aps["fp32"] - a) * 100, 2)} for v, a in aps.items()}
        result["AP_images"] = len(gt["images"])
    return result


def main() -> None:
    global COCO_DEV
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["s640", "nano416"], help="nano416 (trained) or <scale><size>")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=8, help="images per latency / throughput round")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--ap-images", type=int, default=137, help="val2017 images for AP (0: skip AP)")
    ap.add_argument("--data", type=Path, default=COCO_DEV, help="COCO folder (annotations.json, images/); "
                                                                 "default: the shared dev set, else the sample")
    args = ap.parse_args()
    COCO_DEV = args.data
    coco = json.loads((COCO_DEV / "annotations.json").read_text())
    classes = ClassMap.from_coco_categories(coco["categories"])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out[name] = bench_model(name, args, coco, classes, Path(tmp))
            print(name, json.dumps(out[name]), flush=True)
    print(json.dumps({"rounds": args.rounds, "images": args.images, "results": out}, indent=2))


if __name__ == "__main__":
    main()
