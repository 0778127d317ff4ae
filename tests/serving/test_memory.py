"""Memory per request is bounded before decoding: 16 concurrent maximal images (tiny PNGs whose headers
announce max_pixels) keep the worker's RSS under its baseline + decode budget + a fixed slack, all succeed,
and the worker gives the memory back afterwards (issue 16 item 4)."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
from PIL import Image

from cvpipe.serving.process import ServiceProcess

MAX_PIXELS = 6_000_000  # 3000 x 2000: the largest image this service accepts
BUDGET_MB = 64  # decode budget per worker: one maximal image (7 B/px = 42 MB) at a time
SLACK_MB = 120  # model call, letterbox buffers, HTTP bodies, allocator rounding
AFTER_MB = 60  # what may stay resident once the burst is over


def maximal_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2000, 3000, 3), np.uint8)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def worker_process(server_pid: int) -> psutil.Process:
    workers = [p for p in psutil.Process(server_pid).children(recursive=True) if "worker" in " ".join(p.cmdline())]
    assert len(workers) == 1, workers
    return workers[0]


def test_sixteen_concurrent_maximal_images_stay_within_the_budget(packed, tmp_path):
    archive = packed["bento"] / packed["summary"]["bento"]
    png = maximal_png()
    assert len(png) < 100_000  # small on the wire, 42 MB decoded
    env = {"CVPIPE_MAX_PIXELS": str(MAX_PIXELS), "CVPIPE_DECODE_BUDGET_MB": str(BUDGET_MB),
           "CVPIPE_QUEUE_TIMEOUT_S": "60"}
    with ServiceProcess(archive, bentoml_home=tmp_path / "home", env=env) as svc:
        worker = worker_process(svc.proc.pid)
        post = lambda _: httpx.post(svc.url + "/predict", content=png, timeout=120)  # noqa: E731
        assert post(0).status_code == 200  # warm: model, pools, allocator
        baseline = worker.memory_info().rss
        peak, stop = [baseline], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], worker.memory_info().rss)
                stop.wait(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(16) as pool:
            statuses = [r.status_code for r in pool.map(post, range(16))]
        stop.set()
        sampler.join()
        after = worker.memory_info().rss
        too_big = httpx.post(svc.url + "/predict", content=_png_header(3001, 2000), timeout=60)
    mb = 2**20
    print(f"\nworker RSS: baseline {baseline / mb:.0f} MB, peak {peak[0] / mb:.0f} MB, after {after / mb:.0f} MB")
    assert statuses == [200] * 16
    assert peak[0] - baseline < (BUDGET_MB + SLACK_MB) * mb, f"peak {(peak[0] - baseline) / mb:.0f} MB over baseline"
    assert after - baseline < AFTER_MB * mb, f"kept {(after - baseline) / mb:.0f} MB after the burst"
    assert too_big.status_code == 413


def _png_header(w: int, h: int) -> bytes:
    from .test_images import png_header_only

    return png_header_only(w, h)
