"""The upload attack of issue 24 item 11, against a running service, with the worker's RSS sampled throughout.

`stalled`: each client declares a body of `body_bytes`, sends all but the last `withheld` bytes, then waits for
the answer (the service's body deadline ends it). `complete`: each client sends a whole body of random bytes
(not an image). Used by tests/serving/test_upload_memory.py and benchmarks/bench_slow_clients.py --uploads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import psutil

MiB = 2**20
BODY_BYTES = int(19.5 * MiB)  # just under the default 20 MiB limit


@dataclass
class AttackResult:
    statuses: dict[str, int] = field(default_factory=dict)  # status line (or error name) -> count
    baseline_mb: float = 0.0
    peak_mb: float = 0.0
    kept_mb: float = 0.0  # RSS over the baseline once the burst is over
    seconds: float = 0.0

    @property
    def peak_over_mb(self) -> float:
        return self.peak_mb - self.baseline_mb


def service_worker(server_pid: int) -> psutil.Process:
    """The one worker process of a `bentoml serve` (the process that holds the bodies)."""
    procs = [p for p in psutil.Process(server_pid).children(recursive=True) if "worker" in " ".join(p.cmdline())]
    if len(procs) != 1:
        raise RuntimeError(f"expected one service worker, found {len(procs)}")
    return procs[0]


async def _one(port: int, body_bytes: int, sent_bytes: int, timeout_s: float, payload: bytes) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        return type(e).__name__
    try:
        writer.write(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {body_bytes}\r\n\r\n".encode())
        view = memoryview(payload)
        for i in range(0, sent_bytes, len(payload)):
            writer.write(view[: min(len(payload), sent_bytes - i)])
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        return line.decode(errors="replace").strip() or "closed without an answer"
    except (TimeoutError, OSError) as e:
        return type(e).__name__
    finally:
        writer.close()


async def _burst(port: int, clients: int, body_bytes: int, sent_bytes: int, timeout_s: float) -> list[str]:
    payload = bytes(range(256)) * 4096  # 1 MiB of not-an-image
    return list(await asyncio.gather(*(_one(port, body_bytes, sent_bytes, timeout_s, payload)
                                       for _ in range(clients))))


def attack(port: int, worker: psutil.Process, clients: int, complete: bool, body_bytes: int = BODY_BYTES,
           withheld: int = MiB, settle_s: float = 2.0, timeout_s: float = 60.0) -> AttackResult:
    """Run one burst of `clients` uploads; RSS baseline before, peak during, kept after `settle_s`."""
    result = AttackResult(baseline_mb=worker.memory_info().rss / MiB)
    result.peak_mb = result.baseline_mb
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result.peak_mb = max(result.peak_mb, worker.memory_info().rss / MiB)
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        lines = asyncio.run(_burst(port, clients, body_bytes, body_bytes if complete else body_bytes - withheld,
                                   timeout_s))
    finally:
        result.seconds = time.monotonic() - t0
        time.sleep(settle_s)
        stop.set()
        sampler.join()
    result.kept_mb = worker.memory_info().rss / MiB - result.baseline_mb
    for line in lines:
        key = " ".join(line.split()[1:2]) if line.startswith("HTTP/") else line
        result.statuses[key] = result.statuses.get(key, 0) + 1
    return result
