"""Model service overhead: the BentoML service over HTTP vs the same model in-process.

Packs YOLOX-Nano (Megvii's weights, imported from their ONNX, through model_pack's checkpoint path: 416 px,
dynamic batch) and sends its test image
(a COCO image) again and again. Each row: throughput and latency p50/p95 at a concurrency of 1 and 4.
- ort in-process: Predictor.predict_bytes (decode + letterbox + ONNX Runtime, 1 intra-op thread + postprocess),
  c4 = 4 threads sharing one session (they run in parallel; the service's single worker does not)
- service: a real `bentoml serve` of the packed .bento, 1 worker, 1 ORT thread, POST /predict multipart;
  with and without adaptive batching (CVPIPE_BATCH_MAX=4); 1 worker running 2 model calls at once
  (CVPIPE_MODEL_THREADS=2); and 2 workers. The RATIO lines at the end are issue 16's targets.
- pytorch eager: the same weights as an nn.Module (torch 1 thread), same pre/post, c1 only
overhead = p50 / p50 of ORT in-process at the same concurrency. The machine's other load skews all of it:
compare rows of one run only.

    .venv/bin/python benchmarks/bench_serving.py                 # ~2 min
    .venv/bin/python benchmarks/bench_serving.py --seconds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cvpipe.loadtest.runner import RequestSpec, run_phase
from cvpipe.loadtest.stats import latency_stats

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
COCO = Path(os.environ.get("CVPIPE_COCO_DEV", REPO.parent / "shared" / "data" / "coco_real" / "dev"))


def pack(tmp: Path, image: Path) -> tuple[Path, Path]:
    """model_pack's checkpoint path on the nano weights (a dynamic-batch model.onnx, so batching can batch)."""
    from cvpipe.inference.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
    from cvpipe.models.yolox import save_checkpoint
    from cvpipe.models.yolox.onnx_import import load_nano_from_onnx
    from cvpipe.pipeline import StepContext
    from cvpipe.steps.model_pack import ModelPackParams, model_pack

    outs = {"model": tmp / "model", "bento": tmp / "bento"}
    for d in [*outs.values(), tmp / "scratch", tmp / "checkpoints"]:
        d.mkdir()
    save_checkpoint(load_nano_from_onnx(NANO), tmp / "checkpoints" / "best.pt",
                    meta={"class_names": list(COCO_CLASS_NAMES), "category_ids": list(COCO_CATEGORY_IDS),
                          "input_size": [416, 416]})
    ctx = StepContext(step="model_pack", run_id="bench", outputs=outs, scratch=tmp / "scratch")
    summary = model_pack(ModelPackParams(test_image=image), ctx, checkpoints=tmp / "checkpoints")
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

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: worker(), range(concurrency)))
    return latency_stats(lat, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each measured phase")
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--image", type=Path, default=COCO / "images" / "000000000009.jpg")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    console = Console(width=150)
    rows: list[dict] = []

    def add(name: str, conc: int, st: dict) -> None:
        rows.append({"setup": name, "concurrency": conc, **st})
        console.print(f"{name:<36} c={conc}  {st['throughput_rps']:6.1f} req/s  p50 {st['p50_ms']:6.1f} ms  "
                      f"p95 {st['p95_ms']:6.1f} ms  errors {st['errors']}")

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        model_dir, archive = pack(Path(tmp), args.image)
        data = args.image.read_bytes()

        from cvpipe.inference.predictor import Predictor

        pred = Predictor.from_dir(model_dir, intra_op_threads=1)
        for _ in range(5):
            pred.predict_bytes(data)
        for c in (1, 4):
            add("ort in-process (1 thread/session)", c, in_process(lambda: pred.predict_bytes(data), c,
                                                                   args.seconds, args.max_requests))

        import torch

        from cvpipe.vision import decode_image
        from cvpipe.vision import letterbox, postprocess
        from cvpipe.models.yolox.onnx_import import load_nano_from_onnx

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

        from cvpipe.serving.process import ServiceProcess

        req = RequestSpec("/predict", files={"image": (args.image.name, data, "image/jpeg")})
        setups = [("service 1 worker", 1, {}), ("service 1 worker + batching(4)", 1, {"CVPIPE_BATCH_MAX": "4"}),
                  ("service 1 worker, 2 model threads", 1, {"CVPIPE_MODEL_THREADS": "2"}),
                  ("service 2 workers", 2, {})]
        for name, workers, env in setups:
            with ServiceProcess(archive, bentoml_home=Path(tmp) / "home", workers=workers, env=env) as svc:
                run_phase(svc.url, req, name="warmup", concurrency=workers, duration_s=30, max_requests=5 * workers)
                for c in (1, 4):
                    ph = run_phase(svc.url, req, name=name, concurrency=c, duration_s=args.seconds,
                                   max_requests=args.max_requests)
                    add(name, c, ph.stats())

    base = {r["concurrency"]: r for r in rows if r["setup"].startswith("ort")}
    table = Table(title=f"serving benchmark: YOLOX-Nano 416, {args.image.name}, {os.cpu_count()} CPUs "
                        f"({platform.processor() or platform.machine()})", title_justify="left")
    for col in ("setup", "conc.", "req/s", "p50 ms", "p95 ms", "p50 / ort p50 (same conc.)", "errors"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for r in rows:
        table.add_row(r["setup"], str(r["concurrency"]), f"{r['throughput_rps']:.1f}", f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", f"{r['p50_ms'] / base[r['concurrency']]['p50_ms']:.2f}",
                      str(r["errors"]))
    console.print(table)
    ratios = target_ratios(rows)
    for name, (value, target) in ratios.items():
        console.print(f"RATIO {name}: {value:.2f} (target {target})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))


def target_ratios(rows: list[dict]) -> dict[str, tuple[float, str]]:
    """Issue 16's targets, as ratios of rows of this one run."""
    row = {(r["setup"], r["concurrency"]): r for r in rows}
    ort = "ort in-process (1 thread/session)"
    one, two = row[("service 1 worker", 1)], row[("service 1 worker", 4)]
    return {
        "p50 c=1, service 1 worker / in-process": (one["p50_ms"] / row[(ort, 1)]["p50_ms"], "<= 1.1"),
        "throughput c=4, service 1 worker / in-process": (two["throughput_rps"] / row[(ort, 4)]["throughput_rps"], ">= 0.9"),
        "throughput c=4, service 2 workers / in-process": (row[("service 2 workers", 4)]["throughput_rps"]
                                                           / row[(ort, 4)]["throughput_rps"], ">= 0.9"),
        "throughput c=4, 2 workers / 1 worker": (row[("service 2 workers", 4)]["throughput_rps"]
                                                 / two["throughput_rps"], ">= 1.7 where cores allow"),
        "throughput c=4, batching(4) / none": (row[("service 1 worker + batching(4)", 4)]["throughput_rps"]
                                               / two["throughput_rps"], "BentoML-style batching pays off if > 1"),
    }


if __name__ == "__main__":
    main()
