"""A release's mirrored copies, run in a child process of the worker: off the request path and out of its GIL.

The worker hands each copy (an id, the image bytes, the request's score_thr) to a bounded queue and never waits:
a copy that does not fit is dropped (the caller counts it). One child process, started with the release at a
low priority (`nice`), holds its own engine of the mirrored model (1 ONNX Runtime thread, 1 model thread) and
runs the copies one at a time; their results come back on a second queue, matched to the copies by id.

Why a process: a mirror thread inside the worker shares the worker's GIL. At nice 19 it gets little CPU, and
when it is descheduled while holding the GIL, every request thread waits for it (a priority inversion): with
every request copied the champion's p99 rose 1.4-1.8x (docs/production.md). A process at nice 19 only takes the
CPU the worker leaves idle. The child dies with the worker (PR_SET_PDEATHSIG) and is stopped with the release.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cvpipe.serving.settings import ServiceSettings

log = logging.getLogger(__name__)

Outcome = Literal["ok", "refused", "error"]


class MirrorStartError(RuntimeError):
    """The mirror process could not load its model (the message says why) or did not start in time."""


@dataclass(frozen=True)
class MirrorResult:
    """One copy's result: `out` is the engine's prediction when `outcome` is ok; `refused` = the model refused
    the image (the answer said so already), `error` = it raised. Times are the child's own (ms)."""

    seq: int
    outcome: Outcome
    out: dict | None = None
    cpu_ms: float | None = None
    wall_ms: float = 0.0
    error: str = ""


def mirror_settings(settings: ServiceSettings) -> ServiceSettings:
    """The child's engine: one model call at a time, on one ONNX Runtime thread, unbatched."""
    return settings.model_copy(update={"intra_op_threads": 1, "model_threads": 1, "batch_max": 1})


def _child_main(model_dir: str, settings: ServiceSettings, nice: int, parent_pid: int,
                requests: Any, results: Any) -> None:
    """The child: lower its priority before any thread exists (threads inherit it), load, then serve copies."""
    from cvpipe.serving.process import die_with_parent

    die_with_parent(signal.SIGTERM, parent_pid)
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))  # never above the worker
    try:
        from cvpipe.serving.engine import DetectorEngine
        from cvpipe.serving.errors import RequestRefused

        engine = DetectorEngine(model_dir, settings)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which refuses the release
        results.put(("failed", f"{type(e).__name__}: {e}"[:500]))
        return
    results.put(("ready", os.getpid()))
    while (item := requests.get()) is not None:
        seq, data, score_thr = item
        t0 = time.perf_counter()
        try:
            out, cpu_ms = engine.predict_sync_timed(data, score_thr)
        except RequestRefused:
            results.put(MirrorResult(seq, "refused", wall_ms=_ms(t0)))
        except Exception as e:  # noqa: BLE001 - the model's error, counted by the parent
            results.put(MirrorResult(seq, "error", wall_ms=_ms(t0), error=f"{type(e).__name__}: {e}"[:300]))
        else:
            results.put(MirrorResult(seq, "ok", out, cpu_ms, _ms(t0)))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class MirrorProcess:
    """The child process and its two queues. `submit` is called on the request path (never blocks);
    `next_result` blocks (call it in a thread)."""

    def __init__(self, model_dir: str | Path, settings: ServiceSettings, nice: int = 19, queue_size: int = 16,
                 start_timeout_s: float = 120.0):
        self.model_dir, self.settings = str(model_dir), mirror_settings(settings)
        self.nice, self.queue_size, self.start_timeout_s = int(nice), int(queue_size), start_timeout_s
        self._ctx = mp.get_context("spawn")  # a fork of a threaded worker (ONNX Runtime, executors) is unsafe
        self.process: Any = None
        self.requests: Any = None
        self.results: Any = None

    def start(self) -> MirrorProcess:
        """Start the child and wait until its model is loaded; MirrorStartError when it fails."""
        self.requests, self.results = self._ctx.Queue(self.queue_size), self._ctx.Queue()
        self.requests.cancel_join_thread()  # a worker that exits never waits to flush copies nobody will run
        self.process = self._ctx.Process(
            target=_child_main, name="cvpipe-mirror", daemon=True,
            args=(self.model_dir, self.settings, self.nice, os.getpid(), self.requests, self.results))
        self.process.start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                kind, detail = self.results.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    raise MirrorStartError(f"the mirror process exited ({self.process.exitcode}) while loading "
                                           f"its model") from None
                continue
            if kind == "ready":
                return self
            self.close()
            raise MirrorStartError(f"the mirror process could not load its model: {detail}")
        self.close()
        raise MirrorStartError(f"the mirror process did not load its model in {self.start_timeout_s:.0f} s")

    def submit(self, seq: int, data: bytes, score_thr: float | None) -> bool:
        """Queue a copy, or return False when the queue is full (or the child is gone): never waits."""
        try:
            self.requests.put_nowait((seq, data, score_thr))
            return True
        except (queue.Full, ValueError, OSError):  # ValueError/OSError: queue closed by close()
            return False

    def next_result(self, timeout_s: float = 1.0) -> MirrorResult | None:
        """The next result, or None after `timeout_s` (or once closed)."""
        try:
            return self.results.get(timeout=timeout_s)
        except (queue.Empty, ValueError, OSError, EOFError):
            return None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def close(self) -> None:
        """Stop the child now (its queues go with it: copies still queued are dropped)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        proc.terminate()
        proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def process_mirrors(settings: ServiceSettings):
    """The service's mirror factory: (the mirrored model's dir, the release plan) -> a started MirrorProcess."""
    return lambda model_dir, plan: MirrorProcess(model_dir, settings, plan.mirror_nice, plan.queue_size).start()
