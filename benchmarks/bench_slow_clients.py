"""Slow clients cannot starve others: a normal client at 2 req/s, first alone, then while 300 connections
trickle their request bodies (headers, then 1 byte every 2 s; each reconnects when the service drops it).

Targets (issue 16): under attack the normal client keeps >= 95% success and its p99 stays under 2x its idle
p99. Loopback only, bounded: each phase lasts --seconds, the attackers stop with the run.

    .venv/bin/python benchmarks/bench_slow_clients.py                # ~1 min
    .venv/bin/python benchmarks/bench_slow_clients.py --slow 300 --seconds 20 --json out.json
    .venv/bin/python benchmarks/bench_slow_clients.py --uploads      # the upload attack: RSS peak and kept

--uploads (issue 24 item 11): bursts of 40 and 80 clients each sending all but the last MiB of a 19.5 MiB body,
and 40 clients sending complete 19.5 MiB non-images; the worker's RSS baseline, peak and what it keeps after
each burst, with the answers (the default upload budget, 512 MB per worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def pack(tmp: Path) -> tuple[Path, Path]:
    """model_pack of the bundled YOLOX-Nano ONNX (BYO path) -> (model dir, .bento)."""
    from coco_data import ANNOTATIONS, NANO_ONNX, largest_person

    from cvpipe.pipeline import StepContext
    from cvpipe.pipeline.runner import invoke
    from cvpipe.pipeline.step import get_step
    from cvpipe.steps.model_pack import ModelPackParams

    outs = {name: tmp / name for name in get_step("model_pack").outputs}  # every output the step declares
    for d in [*outs.values(), tmp / "scratch"]:
        d.mkdir()
    image = largest_person(json.loads(ANNOTATIONS.read_text()))[0]
    ctx = StepContext(step="model_pack", run_id="bench-slow", outputs=outs, scratch=tmp / "scratch")
    summary = invoke(get_step("model_pack"), ModelPackParams(onnx=NANO_ONNX, class_names=ANNOTATIONS, test_image=image),
                     ctx, {"checkpoints": None, "test_image": None, "dataset": None, "images": None})
    return outs["model"], outs["bento"] / summary["bento"]


async def normal_client(url: str, image: bytes, seconds: float, rate: float) -> dict:
    """`rate` requests per second (open loop: one starts every 1/rate s, whatever the others do)."""
    latencies, failures = [], []

    async def one(http: httpx.AsyncClient):
        t0 = time.perf_counter()
        try:
            r = await http.post(url + "/predict", files={"image": ("t.jpg", image, "image/jpeg")})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(r.status_code)
        except httpx.HTTPError as e:
            failures.append(type(e).__name__)

    async with httpx.AsyncClient(timeout=30) as http:
        tasks, start = [], time.perf_counter()
        for i in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http)))
        await asyncio.gather(*tasks)
    n = len(latencies) + len(failures)
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": n, "success": len(latencies) / max(n, 1), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "failures": failures[:10]}


async def slow_connection(port: int, stop: asyncio.Event, stats: dict) -> None:
    """Headers announcing a 100 kB JPEG, then 1 byte every 2 s; reconnect when the server drops us."""
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n")
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["open"] += 1
        try:
            writer.write(head)
            await writer.drain()
            while not stop.is_set() and not reader.at_eof():
                writer.write(b"\xff")
                await writer.drain()
                try:  # an answer (408) or a close ends this connection
                    data = await asyncio.wait_for(reader.read(100), 2.0)
                    if data or reader.at_eof():
                        stats["answered"] += 1
                        break
                except TimeoutError:
                    pass
        except (ConnectionError, OSError):
            stats["dropped"] += 1
        finally:
            stats["open"] -= 1
            writer.close()


async def attack_and_measure(url: str, port: int, image: bytes, n_slow: int, seconds: float, rate: float):
    stop, stats = asyncio.Event(), {"open": 0, "answered": 0, "dropped": 0, "connect_errors": 0}
    attackers = [asyncio.create_task(slow_connection(port, stop, stats)) for _ in range(n_slow)]
    deadline = time.monotonic() + 30
    while stats["open"] < n_slow and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    opened = stats["open"]
    await asyncio.sleep(2.0)  # the trickle is under way
    result = await normal_client(url, image, seconds, rate)
    stop.set()
    await asyncio.wait(attackers, timeout=10)
    for t in attackers:
        t.cancel()
    return result, {**stats, "open_when_measured": opened}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", type=int, default=300, help="slow-body connections")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    ap.add_argument("--rate", type=float, default=2.0, help="normal client requests per second")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--uploads", action="store_true", help="run the upload attack instead (RSS peak and kept)")
    args = ap.parse_args()
    if args.uploads:
        return upload_rows()
    from cvpipe.serving.process import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
        model_dir, archive = pack(Path(tmp))
        image = (model_dir / "test_image.jpg").read_bytes()
        with ServiceProcess(archive, bentoml_home=Path(tmp) / "home") as svc:
            for _ in range(5):
                httpx.post(svc.url + "/predict", content=image, timeout=60)
            idle = asyncio.run(normal_client(svc.url, image, args.seconds, args.rate))
            attacked, slow = asyncio.run(attack_and_measure(svc.url, svc.port, image, args.slow, args.seconds,
                                                            args.rate))
            alive = httpx.get(svc.url + "/readyz", timeout=10).status_code == 200
    ratio = attacked["p99_ms"] / idle["p99_ms"]
    print(f"idle:     {idle['requests']} requests, success {idle['success']:.1%}, p50 {idle['p50_ms']:.1f} ms, "
          f"p99 {idle['p99_ms']:.1f} ms")
    print(f"attacked: {attacked['requests']} requests, success {attacked['success']:.1%}, p50 "
          f"{attacked['p50_ms']:.1f} ms, p99 {attacked['p99_ms']:.1f} ms; failures {attacked['failures']}")
    print(f"slow connections: {slow}")
    print(f"RATIOS: success under attack {attacked['success']:.3f} (target >= 0.95), "
          f"p99 attacked / idle {ratio:.2f} (target < 2.0); service alive after: {alive}")
    if args.json:
        args.json.write_text(json.dumps({"idle": idle, "attacked": attacked, "slow": slow, "p99_ratio": ratio}))


def upload_rows() -> None:
    sys.path.insert(0, str(REPO / "tests" / "serving"))
    from upload_attack import attack, service_worker

    from cvpipe.serving.process import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
        model_dir, archive = pack(Path(tmp))
        image = (model_dir / "test_image.jpg").read_bytes()
        with ServiceProcess(archive, bentoml_home=Path(tmp) / "home") as svc:
            for _ in range(5):
                httpx.post(svc.url + "/predict", content=image, timeout=60)
            worker = service_worker(svc.proc.pid)
            print("| burst | RSS before | peak | kept after 2 s | answers |\n|---|---|---|---|---|")
            for clients, complete in ((40, False), (80, False), (40, True)):
                r = attack(svc.port, worker, clients, complete)
                what = "complete non-images" if complete else "all but the last MiB"
                print(f"| {clients} x 19.5 MiB, {what} | {r.baseline_mb:.0f} MB | +{r.peak_over_mb:.0f} MB | "
                      f"+{r.kept_mb:.0f} MB | {r.statuses} |", flush=True)


if __name__ == "__main__":
    main()
