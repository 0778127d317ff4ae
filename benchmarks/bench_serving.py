"""Model service overhead: the BentoML service over HTTP vs the same model in-process (issue 16's targets).

Packs YOLOX-Nano (Megvii's weights, imported from their ONNX, through model_pack's checkpoint path: 416 px,
dynamic batch) and sends its test image (a COCO image) again and again. Each row: throughput, latency p50/p95
and CPU time per request (user + system of the process(es) doing the work, client excluded) at a concurrency
of 1 and 4.
- ort in-process: Predictor.predict_bytes (decode + letterbox + ONNX Runtime, 1 intra-op thread + postprocess),
  c4 = 4 threads sharing one session (both cores busy)
- service: a real `bentoml serve` of the packed .bento, POST /predict multipart, sent by benchmarks/lean_http.py
  (keep-alive sockets, one pre-encoded request: tens of microseconds per request; the client shares the
  cores with the service, so a heavy client would be charged to the service). Setups: the defaults (1 worker,
  one model thread per CPU); 1 worker with 1 model thread; 2 workers with 1 model thread each; 1 model thread
  with adaptive batching (CVPIPE_BATCH_MAX=4); and the defaults driven by httpx (cvpipe.loadtest, what
  model_test uses), to show what a Python client costs.
- pytorch eager: the same weights as an nn.Module (torch 1 thread), same pre/post, c1 only
The RATIO lines at the end are issue 16's targets, as ratios of rows of this one run. The machine's other load
skews all of it: compare rows of one run only, and look at the CPU per request, which load skews least.

    .venv/bin/python benchmarks/bench_serving.py                 # ~3 min
    .venv/bin/python benchmarks/bench_serving.py --seconds 5 --json out.json
    .venv/bin/python benchmarks/bench_serving.py --scale s     # YOLOX-S 640: the same overhead, a bigger model
    .venv/bin/python benchmarks/bench_serving.py --scale s --variants openvino_int8 openvino
        # + each packed variant in-process and through the service (CVPIPE_VARIANT), against the pack-time
        #   certificate's speed-ups (needs the COCO dev set: INT8 calibrates on its train images)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from cvpipe.loadtest.runner import RequestSpec, run_phase
from cvpipe.loadtest.stats import latency_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lean_http import multipart_request, run_lean  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
COCO = Path(os.environ.get("CVPIPE_COCO_DEV", REPO.parent / "shared" / "data" / "coco_real" / "dev"))


def coco_dataset(tmp: Path) -> Path:
    """The COCO dev set as a data_prep dataset entity (val2017 images: val, the others: train), for INT8."""
    from cvpipe.data.schema import DetectionDataset

    coco = json.loads((COCO / "annotations.json").read_text())
    images = [{**{k: i[k] for k in ("file_name", "width", "height")}, "image_id": i["id"],
               "split": "val" if "val2017" in i.get("coco_url", "") else "train"} for i in coco["images"]]
    anns = [{"ann_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "x": a["bbox"][0],
             "y": a["bbox"][1], "w": a["bbox"][2], "h": a["bbox"][3], "area": a["area"],
             "iscrowd": a.get("iscrowd", 0)} for a in coco["annotations"]]
    DetectionDataset.build(images, anns, [{"category_id": c["id"], "name": c["name"]} for c in coco["categories"]]
                           ).save(tmp / "dataset")
    return tmp / "dataset"


def pack(tmp: Path, image: Path, scale: str = "nano", variants: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """model_pack's checkpoint path (a dynamic-batch model.onnx, so batching can batch): nano = Megvii's weights
    at 416; s = an untrained YOLOX-S at 640 (its speed does not depend on the weights)."""
    from cvpipe.inference.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
    from cvpipe.models.yolox import save_checkpoint
    from cvpipe.models.yolox.onnx_import import load_nano_from_onnx
    from cvpipe.pipeline import StepContext
    from cvpipe.pipeline.runner import invoke
    from cvpipe.pipeline.step import get_step
    from cvpipe.steps.model_pack import ModelPackParams

    outs = {name: tmp / name for name in get_step("model_pack").outputs}  # every output the step declares
    for d in [*outs.values(), tmp / "scratch", tmp / "checkpoints"]:
        d.mkdir()
    if scale == "nano":
        model, size = load_nano_from_onnx(NANO), 416
    else:
        from cvpipe.models.yolox import build_yolox

        model, size = build_yolox(scale, num_classes=80).eval(), 640
    save_checkpoint(model, tmp / "checkpoints" / "best.pt",
                    meta={"class_names": list(COCO_CLASS_NAMES), "category_ids": list(COCO_CATEGORY_IDS),
                          "input_size": [size, size]})
    ctx = StepContext(step="model_pack", run_id="bench", outputs=outs, scratch=tmp / "scratch")
    data = {"dataset": coco_dataset(tmp), "images": COCO / "images"} if variants else \
        {"dataset": None, "images": None}
    params = ModelPackParams(test_image=image, variants=list(variants), default_variant="fp32", max_val_images=16,
                             match_images=2)  # fp32 stays the default: the setups below are fp32's
    summary = invoke(get_step("model_pack"), params, ctx,
                     {"checkpoints": tmp / "checkpoints", "test_image": None, **data})
    return outs["model"], outs["bento"] / summary["bento"]


def in_process(fn, concurrency: int, seconds: float, max_requests: int) -> dict:
    """Call fn() from `concurrency` threads until the time or request budget is spent."""
    lat, count = [], [0]
    deadline = time.perf_counter() + seconds

    def worker():
        while count[0] < max_requests and time.perf_counter() < deadline:
            count[0] += 1
            s = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - s)

    t0, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: worker(), range(concurrency)))
    st = latency_stats(lat, time.perf_counter() - t0)
    return {**st, "cpu_ms_per_request": 1000 * (time.process_time() - cpu0) / max(1, st["requests"])}


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the server and its workers)."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # gone or not ours to read
            pass
    return total


def measured(pid: int, phase) -> dict:
    """phase() -> latency stats, with the server tree's CPU per request added."""
    cpu0 = tree_cpu_s(pid)
    st = phase()
    return {**st, "cpu_ms_per_request": 1000 * (tree_cpu_s(pid) - cpu0) / max(1, st["requests"])}


ORT = "ort in-process (1 thread/session)"
DEFAULTS = "service defaults (1 worker)"
ONE_THREAD = "service 1 worker, 1 model thread"
TWO_WORKERS = "service 2 workers, 1 model thread each"
BATCHING = "service 1 model thread + batching(4)"
HTTPX = "service defaults, httpx client"
SETUPS = [(DEFAULTS, 1, {}, "lean"), (ONE_THREAD, 1, {"CVPIPE_MODEL_THREADS": "1"}, "lean"),
          (TWO_WORKERS, 2, {"CVPIPE_MODEL_THREADS": "1"}, "lean"),
          (BATCHING, 1, {"CVPIPE_MODEL_THREADS": "1", "CVPIPE_BATCH_MAX": "4"}, "lean"), (HTTPX, 1, {}, "httpx")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each measured phase")
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--image", type=Path, default=COCO / "images" / "000000000009.jpg")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--variants", nargs="*", default=[], choices=["int8", "openvino", "openvino_int8"],
                    help="also pack these variants and measure each in-process and through the service")
    ap.add_argument("--scale", choices=["nano", "s"], default="nano",
                    help="nano: Megvii's YOLOX-Nano at 416 (the issue's model); s: an untrained YOLOX-S at 640 "
                         "(latency only; no pytorch row)")
    ap.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                    help="only the issue-22 overhead targets: in-process ORT and the service (defaults, up the whole "
                         "time) in alternating phases for ROUNDS rounds; medians and quartiles of each round's ratios")
    args = ap.parse_args()
    console = Console(width=160)
    if args.paired:
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
            model_dir, archive = pack(Path(tmp), args.image, args.scale)
            paired_rounds(model_dir, archive, Path(tmp), args, console)
        return
    rows: list[dict] = []

    def add(name: str, conc: int, st: dict) -> None:
        rows.append({"setup": name, "concurrency": conc, **st})
        console.print(f"{name:<40} c={conc}  {st['throughput_rps']:6.1f} req/s  p50 {st['p50_ms']:6.1f} ms  "
                      f"p95 {st['p95_ms']:6.1f} ms  cpu {st['cpu_ms_per_request']:5.1f} ms/req  "
                      f"errors {st['errors']}")

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        model_dir, archive = pack(Path(tmp), args.image, args.scale, tuple(args.variants))
        data = args.image.read_bytes()
        in_process_rows(model_dir, data, args, add)
        for name, workers, env, client in SETUPS:
            service_rows(archive, Path(tmp), name, workers, env, client, data, args, add)
        variants = variant_rows(model_dir, archive, Path(tmp), data, args, add)
    print_results(console, rows, args)
    for name, (value, certified) in variant_ratios(rows, variants).items():
        console.print(f"RATIO {name}: {value:.2f} (model_pack's certificate: {certified})")


def paired_rounds(model_dir: Path, archive: Path, tmp: Path, args, console: Console) -> None:
    """The overhead targets measured as paired ratios: each round runs in-process ORT and the service at c=1 and
    c=4 back to back (order alternating), so both sides of a ratio see the same stretch of machine load; one
    run of each in sequence swung 0.75-0.97x on an idle machine."""
    import numpy as np

    from cvpipe.inference.predictor import Predictor
    from cvpipe.serving.process import ServiceProcess

    data = args.image.read_bytes()
    raw = multipart_request("/predict", "image", args.image.name, data)
    pred = Predictor.from_dir(model_dir, intra_op_threads=1)
    for _ in range(5):
        pred.predict_bytes(data)
    rounds = []
    with ServiceProcess(archive, bentoml_home=tmp / "home") as svc:
        run_lean(svc.url, raw, 2, 3.0, 50)  # warm the worker
        for r in range(args.paired):
            got: dict = {}
            for side in (("ort", "service") if r % 2 == 0 else ("service", "ort")):
                for c in (1, 4):
                    got[side, c] = (in_process(lambda: pred.predict_bytes(data), c, args.seconds, args.max_requests)
                                    if side == "ort" else run_lean(svc.url, raw, c, args.seconds, args.max_requests))
            rounds.append({"p50_c1_extra_ms": got["service", 1]["p50_ms"] - got["ort", 1]["p50_ms"],
                           "throughput_c4_ratio": got["service", 4]["throughput_rps"] / got["ort", 4]["throughput_rps"],
                           "errors": got["service", 1]["errors"] + got["service", 4]["errors"],
                           "load": os.getloadavg()[0]})
            console.print(f"round {r}: " + "  ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()))
    summary = {k: [round(float(q), 3) for q in np.percentile([x[k] for x in rounds], [25, 50, 75])]
               for k in ("p50_c1_extra_ms", "throughput_c4_ratio")}
    console.print(f"RATIO p50 c=1 minus in-process p50, ms, quartiles of {len(rounds)} paired rounds: "
                  f"{summary['p50_c1_extra_ms']} (target <= 3)")
    console.print(f"RATIO throughput c=4, service / in-process, quartiles of {len(rounds)} paired rounds: "
                  f"{summary['throughput_c4_ratio']} (target >= 0.93)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "quartiles": summary, "cpus": os.cpu_count()}, indent=2))


def in_process_rows(model_dir: Path, data: bytes, args, add) -> None:
    from cvpipe.inference.predictor import Predictor

    pred = Predictor.from_dir(model_dir, intra_op_threads=1)
    for _ in range(5):
        pred.predict_bytes(data)
    for c in (1, 4):
        add(ORT, c, in_process(lambda: pred.predict_bytes(data), c, args.seconds, args.max_requests))
    if args.scale != "nano":
        return

    import torch

    from cvpipe.models.yolox.onnx_import import load_nano_from_onnx
    from cvpipe.vision import decode_image, letterbox, postprocess

    torch.set_num_threads(1)
    model = load_nano_from_onnx(NANO)

    def torch_predict():
        image = decode_image(data)
        x, r = letterbox(image, (416, 416))
        with torch.no_grad():
            out = model(torch.from_numpy(x[None]))[0].numpy()
        return postprocess(out, r, 0.25, 0.45, 300, image.shape[:2])

    for _ in range(3):
        torch_predict()
    add("pytorch eager in-process (1 thread)", 1, in_process(torch_predict, 1, args.seconds, args.max_requests))


def variant_rows(model_dir: Path, archive: Path, tmp: Path, data: bytes, args, add) -> dict[str, dict]:
    """Each packed variant in-process and through the service defaults (CVPIPE_VARIANT); returns the packed
    variants' pack-time speed (their certificates)."""
    from cvpipe.inference.packed import PackedModel
    from cvpipe.inference.predictor import Predictor

    packed = PackedModel.load(model_dir)
    for name in args.variants:
        if name not in packed.variants:
            print(f"variant {name} not packed: {packed.meta['refused_variants'][name]['reason']}")
            continue
        pred = Predictor.from_dir(model_dir, variant=name, intra_op_threads=1)
        for c in (1, 4):
            add(f"{name} in-process", c, in_process(lambda p=pred: p.predict_bytes(data), c, args.seconds,
                                                    args.max_requests))
        service_rows(archive, tmp, f"service defaults, {name}", 1, {"CVPIPE_VARIANT": name}, "lean", data, args,
                     add)
    return {n: v.certificate.get("speed", {}) for n, v in packed.variants.items() if n in args.variants}


def variant_ratios(rows: list[dict], speed: dict[str, dict]) -> dict[str, tuple[float, str]]:
    """Each variant vs fp32 through the service (rows of this run) next to the pack-time certificate."""
    row = {(r["setup"], r["concurrency"]): r for r in rows}
    out = {}
    for name, cert in speed.items():
        svc = f"service defaults, {name}"
        out[f"{name} vs fp32, service p50 c=1"] = (row[(DEFAULTS, 1)]["p50_ms"] / row[(svc, 1)]["p50_ms"],
                                                   f"{cert.get('speedup_c1')}x, model only")
        out[f"{name} vs fp32, service throughput c=4"] = (row[(svc, 4)]["throughput_rps"]
                                                          / row[(DEFAULTS, 4)]["throughput_rps"],
                                                          f"{cert.get('speedup_throughput')}x, model only")
    return out


def service_rows(archive: Path, tmp: Path, name: str, workers: int, env: dict, client: str, data: bytes, args,
                 add) -> None:
    from cvpipe.serving.process import ServiceProcess

    raw = multipart_request("/predict", "image", args.image.name, data)
    req = RequestSpec("/predict", files={"image": (args.image.name, data, "image/jpeg")})
    with ServiceProcess(archive, bentoml_home=tmp / "home", workers=workers, env=env) as svc:
        run_lean(svc.url, raw, 2 * workers, 3.0, 50 * workers)  # warm every worker
        for c in (1, 4):
            if client == "lean":
                phase = lambda c=c: run_lean(svc.url, raw, c, args.seconds, args.max_requests)  # noqa: E731
            else:
                phase = lambda c=c: run_phase(svc.url, req, name=name, concurrency=c,  # noqa: E731
                                          duration_s=args.seconds, max_requests=args.max_requests).stats()
            add(name, c, measured(svc.proc.pid, phase))


def print_results(console: Console, rows: list[dict], args) -> None:
    base = {r["concurrency"]: r for r in rows if r["setup"] == ORT}
    model = "YOLOX-Nano 416" if args.scale == "nano" else f"YOLOX-{args.scale.upper()} 640 (untrained)"
    table = Table(title=f"serving benchmark: {model}, {args.image.name}, {os.cpu_count()} CPUs "
                        f"({platform.processor() or platform.machine()})", title_justify="left")
    for col in ("setup", "conc.", "req/s", "p50 ms", "p95 ms", "p50 / ort p50", "CPU ms/req", "CPU / ort CPU",
                "errors"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for r in rows:
        ort = base[r["concurrency"]]
        table.add_row(r["setup"], str(r["concurrency"]), f"{r['throughput_rps']:.1f}", f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", f"{r['p50_ms'] / ort['p50_ms']:.2f}", f"{r['cpu_ms_per_request']:.1f}",
                      f"{r['cpu_ms_per_request'] / ort['cpu_ms_per_request']:.2f}", str(r["errors"]))
    console.print(table)
    for name, (value, target) in target_ratios(rows).items():
        console.print(f"RATIO {name}: {value:.2f} (target {target})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))


def target_ratios(rows: list[dict]) -> dict[str, tuple[float, str]]:
    """Issue 16's targets, as ratios of rows of this one run."""
    row = {(r["setup"], r["concurrency"]): r for r in rows}
    rps = lambda setup, c=4: row[(setup, c)]["throughput_rps"]  # noqa: E731
    return {
        "p50 c=1, service / in-process": (row[(DEFAULTS, 1)]["p50_ms"] / row[(ORT, 1)]["p50_ms"], "<= 1.1"),
        "p50 c=1 minus in-process p50, ms": (row[(DEFAULTS, 1)]["p50_ms"] - row[(ORT, 1)]["p50_ms"],
                                             "the service's own cost per request"),
        "CPU per request c=4, service / in-process": (row[(DEFAULTS, 4)]["cpu_ms_per_request"]
                                                      / row[(ORT, 4)]["cpu_ms_per_request"], "the cost in CPU"),
        "throughput c=4, service / in-process": (rps(DEFAULTS) / rps(ORT), ">= 0.9"),
        "throughput c=4, 2 workers / 1 worker (1 model thread each)": (rps(TWO_WORKERS) / rps(ONE_THREAD),
                                                                       ">= 1.7 where cores allow"),
        "throughput c=4, batching(4) / none (1 model thread)": (rps(BATCHING) / rps(ONE_THREAD),
                                                                "batching pays off if > 1"),
        "p50 c=1, httpx client / lean client": (row[(HTTPX, 1)]["p50_ms"] / row[(DEFAULTS, 1)]["p50_ms"],
                                                "what the client costs"),
    }


if __name__ == "__main__":
    main()
