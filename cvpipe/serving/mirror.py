"""A release's mirrored copies, run in a child process of the worker: off the request path and out of its GIL.

The worker hands each copy (an id, the image bytes, the request's score_thr) to a bounded queue and never waits:
a copy that does not fit is dropped (the caller counts it). One child process, started with the release at a
low priority (`nice`), holds its own engine of the mirrored model (1 ONNX Runtime thread, 1 model thread) and
runs the copies one at a time; their results come back on a second queue, matched to the copies by id.

Why a process: a mirror thread inside the worker shares the worker's GIL. At nice 19 it gets little CPU, and
when it is descheduled while holding the GIL, every request thread waits for it (a priority inversion): with
every request copied the champion's p99 rose 1.4-1.8x (docs/production.md). The child dies with the worker
(PR_SET_PDEATHSIG) and is stopped with the release.

How it stays out of the answers' way (MirrorPolicy; measured in benchmarks/bench_mirror.py, docs/production.md):
- every thread of the child runs under SCHED_IDLE (Linux) and at nice `nice`: a core goes to the mirror only when
  no normal task wants it, and a waking request thread preempts it at once (nice 19 alone still gets a share of
  a busy core, and a nice-19 task is not always preempted on wake-up). Threads a library started before the
  policy was set (OpenBLAS's pool, at numpy's import) are moved too: priority is per thread on Linux;
- at most `cpu_share` of one core (a duty cycle: after a copy that took c s of CPU the child pauses until c /
  cpu_share s after it began): meanwhile its queue fills and further copies are dropped by `submit` (counted)
  instead of taking CPU from the answers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
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


@dataclass(frozen=True)
class MirrorPolicy:
    """How little the mirror may take: its threads' scheduling and a cap on its CPU."""

    nice: int = 19
    sched_idle: bool = True  # SCHED_IDLE where the OS has it (Linux); else nice alone
    own_group: bool = True  # a session of its own, so an autogroup of its own, at the autogroup's nice
    cpu_share: float = 1.0  # of one core (1.0: no cap beyond the scheduling)


@dataclass
class CpuBudget:
    """A duty-cycle cap on CPU: a copy that began at `start` and took `cpu_s` of CPU lets the next one begin no
    sooner than start + cpu_s / share. So over any stretch of time the copies use at most `share` of one core
    (plus the one copy in progress), whatever their size; a copy that waited for a core longer than that is
    followed at once. Plain numbers in and out (tested without a clock)."""

    share: float
    ready_at: float = 0.0  # when the next copy may begin

    def record(self, start: float, cpu_s: float) -> None:
        self.ready_at = start + cpu_s / self.share

    def pause_s(self, now: float) -> float:
        """How long to wait before the next copy (0: now)."""
        return max(0.0, self.ready_at - now)


def leave_the_workers_group(nice: int) -> bool:
    """Start a session of our own and give its autogroup `nice`; True when the kernel groups by session.

    Why: with autogroup scheduling (Linux's default on most distributions) CPU is shared fairly between
    sessions first, and only then between the tasks of a session by their nice value or policy. A mirror in the
    worker's session spends the worker's share: on a busy host the worker then waits behind other sessions for
    the CPU its mirror took, however idle the mirror's own policy (measured: docs/production.md). A session of its
    own at autogroup nice 19 is charged to itself. (A container's CPU quota still counts the mirror: the
    `cpu_share` cap is what bounds that.)"""
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroup in this kernel
        return False
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def lower_priority(policy: MirrorPolicy) -> str:
    """Put every thread of this process under the policy's scheduling; returns what was applied ("idle" or
    "nice", + "+group" for a session and autogroup of its own). Never raises the priority above what the
    thread has (a worker at nice 5 keeps its child >= 5)."""
    grouped = policy.own_group and leave_the_workers_group(policy.nice)
    idle = policy.sched_idle and hasattr(os, "SCHED_IDLE")
    for tid in _threads():
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(policy.nice, os.getpriority(os.PRIO_PROCESS, tid)))
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except PermissionError:  # a sandbox that forbids it: nice alone
            idle = False
    return ("idle" if idle else "nice") + ("+group" if grouped else "")


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread (0 = this one) is all we can reach
        return [0]


def mirror_settings(settings: ServiceSettings) -> ServiceSettings:
    """The child's engine: one model call at a time, on one ONNX Runtime thread, unbatched."""
    return settings.model_copy(update={"intra_op_threads": 1, "model_threads": 1, "batch_max": 1})


def _child_main(model_dir: str, settings: ServiceSettings, policy: MirrorPolicy, parent_pid: int,
                requests: Any, results: Any) -> None:
    """The child: lower its threads' priority before loading (threads started later inherit it), load, then
    serve copies within the CPU budget."""
    from cvpipe.serving.process import die_with_parent

    die_with_parent(signal.SIGTERM, parent_pid)
    lower_priority(policy)
    try:
        from cvpipe.serving.engine import DetectorEngine
        from cvpipe.serving.errors import RequestRefused

        engine = DetectorEngine(model_dir, settings)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which refuses the release
        results.put(("failed", f"{type(e).__name__}: {e}"[:500]))
        return
    results.put(("ready", lower_priority(policy)))  # again: a thread the engine's libraries started unasked
    budget = CpuBudget(policy.cpu_share) if policy.cpu_share < 1.0 else None
    serve_copies(lambda item: _run_copy(engine, RequestRefused, *item), requests.get, results.put, budget)


def serve_copies(run: Callable[[tuple], MirrorResult], take: Callable[[], tuple | None],
                 give: Callable[[MirrorResult], None], budget: CpuBudget | None,
                 clock: Callable[[], float] = time.monotonic, cpu_clock: Callable[[], float] = time.process_time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Run copies one at a time until `take` gives None. Over its budget the loop pauses before taking the next
    copy: meanwhile the bounded queue fills and the worker drops copies instead of this process taking CPU."""
    while True:
        if budget is not None and (pause := budget.pause_s(clock())) > 0:
            sleep(pause)
        if (item := take()) is None:
            return
        start, cpu0 = clock(), cpu_clock()
        give(run(item))
        if budget is not None:
            budget.record(start, cpu_clock() - cpu0)


def _run_copy(engine: Any, refused: type[Exception], seq: int, data: bytes, score_thr: float | None) -> MirrorResult:
    t0 = time.perf_counter()
    try:
        out, cpu_ms = engine.predict_sync_timed(data, score_thr)
    except refused:
        return MirrorResult(seq, "refused", wall_ms=_ms(t0))
    except Exception as e:  # noqa: BLE001 - the model's error, counted by the parent
        return MirrorResult(seq, "error", wall_ms=_ms(t0), error=f"{type(e).__name__}: {e}"[:300])
    return MirrorResult(seq, "ok", out, cpu_ms, _ms(t0))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class MirrorProcess:
    """The child process and its two queues. `submit` is called on the request path (never blocks);
    `next_result` blocks (call it in a thread)."""

    def __init__(self, model_dir: str | Path, settings: ServiceSettings, policy: MirrorPolicy | None = None,
                 queue_size: int = 16, start_timeout_s: float = 120.0):
        self.model_dir, self.settings = str(model_dir), mirror_settings(settings)
        self.policy, self.queue_size, self.start_timeout_s = policy or MirrorPolicy(), int(queue_size), start_timeout_s
        self.scheduling = ""  # what the child applied (lower_priority's answer, e.g. "idle+group")
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
            args=(self.model_dir, self.settings, self.policy, os.getpid(), self.requests, self.results))
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
                self.scheduling = detail
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
    def start(model_dir: Path, plan: Any) -> MirrorProcess:
        policy = MirrorPolicy(plan.mirror_nice, plan.mirror_idle, plan.mirror_own_group, plan.mirror_cpu_share)
        return MirrorProcess(model_dir, settings, policy, plan.queue_size).start()

    return start
