"""A/B of the service's own cost per request: this checkout's Bento vs a baseline checkout's, served side by side,
requests alternated one by one (both see the same machine load, which on a shared machine swamps bench_serving's
ratios). Prints the worker's CPU time and the wall p50 per /predict, multipart and raw body, one model thread.

    git worktree add /tmp/baseline main
    .venv/bin/python benchmarks/bench_service_ab.py --baseline /tmp/baseline          # ~3 min
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from lean_http import KeepAliveConnection, multipart_request

PACK = ("import sys; sys.path[:0] = ['tests', 'benchmarks']\nfrom pathlib import Path\n"
        "from bench_slow_clients import pack\nmodel, bento = pack(Path(sys.argv[1]))\nprint(model)\nprint(bento)")


def pack_with(source: Path, out: Path) -> tuple[Path, Path]:
    """model_pack of the bundled nano with `source`'s code (so its Bento carries that code)."""
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", PACK, str(out)], cwd=source, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(source)), check=True)
    model, bento = proc.stdout.strip().splitlines()[-2:]
    return Path(model), Path(bento)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with")
    ap.add_argument("--requests", type=int, default=300, help="per side and body kind")
    args = ap.parse_args()
    from cvpipe.serving.process import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        packs = {"baseline": pack_with(args.baseline.resolve(), Path(tmp) / "baseline"),
                 "this": pack_with(REPO, Path(tmp) / "this")}
        os.environ.pop("PYTHONPATH", None)  # each server runs the code inside its own Bento
        image = (packs["this"][0] / "test_image.jpg").read_bytes()
        requests = {"multipart": multipart_request("/predict", "image", "t.jpg", image),
                    "raw": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: "
                           + str(len(image)).encode() + b"\r\n\r\n" + image}
        servers = {name: ServiceProcess(bento, bentoml_home=Path(tmp) / name / "home",
                                        env={"CVPIPE_MODEL_THREADS": "1"}) for name, (_, bento) in packs.items()}
        try:
            for s in servers.values():
                s.start()
            measure(servers, requests, args.requests)
        finally:
            for s in servers.values():
                s.close()


def measure(servers: dict, requests: dict[str, bytes], n: int) -> None:
    workers = {name: next(p for p in psutil.Process(s.proc.pid).children(recursive=True)
                          if "worker" in " ".join(p.cmdline())) for name, s in servers.items()}
    conns = {name: KeepAliveConnection(s.url) for name, s in servers.items()}
    print("| body | code | worker CPU ms/request | wall p50 ms |\n|---|---|---|---|")
    for kind, raw in requests.items():
        for conn in conns.values():
            for _ in range(30):  # warm
                conn.request(raw)
        cpu, wall = dict.fromkeys(servers, 0.0), {name: [] for name in servers}
        for i in range(n):
            for name in (list(servers) if i % 2 else list(servers)[::-1]):
                c0, t0 = sum(workers[name].cpu_times()[:2]), time.perf_counter()
                status, _ = conns[name].request(raw)
                wall[name].append(time.perf_counter() - t0)
                cpu[name] += sum(workers[name].cpu_times()[:2]) - c0
                assert status == 200, (name, kind, status)
        for name in servers:
            print(f"| {kind} | {name} | {1000 * cpu[name] / n:.2f} | {1000 * sorted(wall[name])[n // 2]:.1f} |")


if __name__ == "__main__":
    main()
