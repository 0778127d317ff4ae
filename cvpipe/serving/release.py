"""A live release: the champion and a challenger loaded side by side in one worker, the challenger tried on
real traffic, then promoted or rolled back by the rules of cvpipe.serving.release_rules.

- shadow: the champion answers every request; a share is copied to a bounded queue (dropped when full) and run
  on the challenger by a low-priority child process (cvpipe.serving.mirror), off the request path and outside
  the worker's GIL: answers never wait for it;
- canary: a share of request keys (X-Client-Id; without one, of requests) is answered by the challenger (loaded
  in the worker); a sample of those is run on the champion the same way, in the child, to measure agreement. A
  challenger that fails (not a refused image: an exception) is counted and the champion answers instead: the
  client gets a 200.

Every answer names the model that produced it. Each `window_s` the window's figures go through `decide`:
rollback (challenger dropped), promote (challenger swapped in as the champion) or continue. Start, promotion,
rollback and abort are events of the promotion log (cvpipe.store.promotion) with the window's figures.

Restart: the release lives in one worker's memory. A worker that starts while the log has an open release
records it as aborted ("service restarted mid-release") and serves the champion: a restarted release would
start its windows from zero anyway, and an operator restarts it on purpose (`cvpipe release start`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cvpipe.inference.matching import detection_f1
from cvpipe.serving.errors import RequestRefused
from cvpipe.serving.mirror import MirrorResult, MirrorStartError
from cvpipe.serving.release_rules import (
    Decision,
    ReleasePlan,
    Role,
    WindowFigures,
    WindowStats,
    decide,
    routes_to_challenger,
)

log = logging.getLogger(__name__)


class ReleaseRefused(ValueError):
    """A release command that may not run; `status` is its HTTP status (404, 409, 422)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Mirror:
    """A request copied off the path: run it on `role`, compare with the answer the other model gave."""

    data: bytes
    score_thr: float | None
    answered: list[dict]
    role: Role


class MirrorSink(Protocol):
    """Where mirrored copies run (cvpipe.serving.mirror.MirrorProcess; tests use fakes)."""

    def submit(self, seq: int, data: bytes, score_thr: float | None) -> bool: ...  # never waits; False: dropped

    def next_result(self, timeout_s: float = 1.0) -> MirrorResult | None: ...  # blocks up to timeout_s

    @property
    def alive(self) -> bool: ...

    scheduling: str  # what the sink's process runs under: "idle" (SCHED_IDLE) or "nice", + "+group"

    def start(self) -> Any: ...  # (re)start, blocking until ready

    def close(self) -> None: ...


MirrorFactory = Callable[[Path, ReleasePlan], MirrorSink]  # (the mirrored model's dir, plan) -> a started sink


def release_needs_one_worker(workers: int) -> str:
    """Why `start` is refused under several workers, and what to do instead."""
    return (f"a release runs in one worker's memory (its windows, challenger and mirror process) and this service "
            f"has {workers} workers: each would see part of the traffic and promote or roll back on its own. Run "
            f"the release on a service with CVPIPE_WORKERS=1 (restart this one so, or serve a second one beside "
            f"it and send it part of the traffic)")


@dataclass
class Release:
    """One release in progress: both engines, the plan, the current window and what it decided so far."""

    plan: ReleasePlan
    champion: Any  # DetectorEngine
    challenger: Any
    start_seq: int
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    started_at: float = 0.0
    window_end: float = 0.0
    stats: WindowStats = field(default_factory=WindowStats)
    clean: int = 0
    history: list[dict] = field(default_factory=list)  # closed windows: figures + verdict
    sink: MirrorSink | None = None  # where copies run; None: every copy is dropped (counted)
    pending: dict[int, Mirror] = field(default_factory=dict)  # copies handed to the sink, by id, without image
    next_seq: int = 0
    state: str = "running"  # running | promoted | rolled_back | aborted

    def __post_init__(self) -> None:
        self.started_at = self.clock()
        self.window_end = self.started_at + self.plan.window_s

    def role_for(self, key: str | None) -> Role:
        if self.plan.mode == "canary" and routes_to_challenger(self.plan.share, key, self.rng):
            return "challenger"
        return "champion"

    def engine(self, role: Role):
        return self.champion if role == "champion" else self.challenger

    def mirror(self, item: Mirror) -> bool:
        """Hand a copy to the sink, or drop it when the sink's queue is full (counted): never waits."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        if self.sink is None or not self.sink.submit(seq, item.data, item.score_thr):
            self.stats.dropped += 1
            return False
        self.pending[seq] = replace(item, data=b"")  # the image travels in the queue only
        return True

    def record_result(self, result: MirrorResult) -> Mirror | None:
        """A result from the sink, matched to its copy (None: not a copy of this sink's current run)."""
        item = self.pending.pop(result.seq, None)
        if item is not None and result.outcome != "refused":  # refused: the answer refused the image too
            self.record_mirror(item, result.out if result.outcome == "ok" else None, result.cpu_ms)
        return item

    def lose_pending(self) -> int:
        """The sink died: its copies in flight count as the mirrored model's failures (a challenger that
        crashes its process must be rolled back like one that raises)."""
        lost = list(self.pending.values())
        self.pending.clear()
        for item in lost:
            self.record_mirror(item, None, None)
        return len(lost)

    def wants_mirror(self, answered_by: Role) -> Role | None:
        """Which model a copy of this answer should run on, if any."""
        if self.plan.mode == "shadow":
            return "challenger" if self.rng.random() < self.plan.share else None
        if answered_by == "challenger" and self.rng.random() < self.plan.compare_share:
            return "champion"
        return None

    def record_mirror(self, item: Mirror, out: dict | None, cpu_ms: float | None) -> None:
        """The result of a mirrored copy (None: it failed)."""
        if item.role == "challenger":
            self.stats.challenger_call(out is not None)
        if out is None:
            return
        if cpu_ms is not None:
            self.stats.latency(item.role, cpu_ms)
        ran = out["detections"]
        champion, challenger = (ran, item.answered) if item.role == "champion" else (item.answered, ran)
        self.stats.compared(detection_f1(challenger, champion), champion, challenger)

    def close_window(self) -> tuple[WindowFigures, Decision]:
        figures = self.stats.figures()
        decision = decide(figures, self.plan, self.clean)
        self.clean = decision.clean_windows
        self.history.append({**figures.as_dict(), "verdict": decision.verdict, "reasons": list(decision.reasons)})
        del self.history[:-100]
        self.stats = WindowStats(index=figures.index + 1)
        self.window_end += self.plan.window_s
        if self.window_end <= self.clock():  # no traffic for a while: the next window starts now
            self.window_end = self.clock() + self.plan.window_s
        return figures, decision

    def status(self) -> dict:
        now = self.clock()
        return {"state": self.state, "mode": self.plan.mode, "share": self.plan.share,
                "champion": self.champion.run_id, "challenger": self.challenger.run_id,
                "plan": self.plan.model_dump(), "start_seq": self.start_seq,
                "running_s": round(now - self.started_at, 1), "window": self.stats.index,
                "window_left_s": round(max(0.0, self.window_end - now), 1), "clean_windows": self.clean,
                "current": self.stats.figures().as_dict(), "windows": self.history[-10:],
                "mirror": {"running": self.sink is not None and self.sink.alive, "in_flight": len(self.pending),
                           "scheduling": self.sink.scheduling if self.sink is not None else ""}}


class ReleaseController:
    """The worker's release, if any, between the service and its ModelManager (one per worker).

    `predict` is the request path; `start`, `promote`, `abort` are the admin commands (blocking: run them in a
    thread); tasks in the event loop take the mirrored copies' results and close windows."""

    def __init__(self, manager, mirror_factory: MirrorFactory,
                 on_answer: Callable[[str, str, str, str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """`mirror_factory`: starts the sink of a release's mirrored copies (the service's: a MirrorProcess
        built from its settings)."""
        self.manager, self.clock, self.mirror_factory = manager, clock, mirror_factory
        self.release: Release | None = None
        self.last: dict | None = None  # the status of the last release that ended
        self.on_answer = on_answer  # (run id, role, path, outcome, seconds) -> metrics
        self.lock = threading.Lock()  # one admin command at a time
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cvpipe-mirror-results")  # waits on the sink
        self._task_for: Release | None = None  # the release whose loop tasks run
        self._tasks: tuple[asyncio.Task, ...] = ()  # referenced, so they are not garbage-collected
        manager.release_active = lambda: self.release is not None
        self._close_interrupted()

    # ---- the promotion log ------------------------------------------------------------------------------
    def _log(self):
        from cvpipe.store.promotion import PromotionLog

        if self.manager.source is None:
            raise ReleaseRefused(409, "no model store configured (set CVPIPE_FOLLOW_STORE): releases are "
                                      "recorded in its promotion log")
        return PromotionLog(self.manager.source.store)

    def _close_interrupted(self) -> None:
        if self.manager.source is None:
            return
        try:
            event = self._log().close_open_release(
                "release_abort", f"service restarted mid-release; champion {self.manager.live_run_id} serves")
        except Exception:  # noqa: BLE001 - a store hiccup at startup must not stop the champion serving
            log.exception("could not check the promotion log for an interrupted release")
            return
        if event is not None:
            log.warning("release of %s was interrupted by a restart: recorded as aborted (event %s)",
                        event.run_id, event.seq)

    # ---- admin commands (blocking) -----------------------------------------------------------------------
    def start(self, run_id: str, plan: ReleasePlan, reason: str = "") -> dict:
        """Load and check the challenger beside the champion, record the start, begin routing."""
        from cvpipe.serving.swap import check_candidate, check_engine

        with self.lock:
            if self.release is not None:
                raise ReleaseRefused(409, f"a release of {self.release.challenger.run_id} is in progress; "
                                          f"`cvpipe release abort` it first")
            source = self.manager.source
            store_log = self._log()
            try:
                rid, model_dir = source.resolve(str(run_id))
            except Exception as e:  # noqa: BLE001 - any resolution failure is a clear refusal
                from cvpipe.serving.swap import scrub_paths

                shown = str(run_id)[:80]
                raise ReleaseRefused(404, f"unknown run {shown!r}: {scrub_paths(_text(e), source.roots)}") from None
            champion = self.manager.engine
            if rid == champion.run_id:
                raise ReleaseRefused(409, f"{rid} is the champion already")
            try:
                check_candidate(model_dir, rid, self.manager.live_contract)
                challenger = self.manager.make_engine(model_dir)
                check_engine(challenger)
            except Exception as e:  # noqa: BLE001 - a bad model is refused whatever it raised
                from cvpipe.serving.swap import scrub_paths

                raise ReleaseRefused(422, f"challenger {rid} refused: " +
                                     scrub_paths(_text(e), source.roots)) from None
            mirrored = model_dir if plan.mode == "shadow" else champion.model_dir  # the model copies run on
            try:
                sink = self.mirror_factory(Path(mirrored), plan)
            except MirrorStartError as e:
                challenger.executor.shutdown(wait=False)
                raise ReleaseRefused(503, f"could not start the release's mirror: {e}") from None
            from cvpipe.store.promotion import PromotionError

            try:
                event = store_log.start_release(rid, reason or f"{plan.mode} release", plan.model_dump())
            except PromotionError as e:
                challenger.executor.shutdown(wait=False)
                sink.close()
                raise ReleaseRefused(409, str(e)) from None
            self.release = Release(plan, champion, challenger, event.seq, clock=self.clock, sink=sink)
            log.info("release of %s started (%s, share %s) against %s", rid, plan.mode, plan.share,
                     champion.run_id)
            return self.status()

    def promote(self, reason: str = "promoted by hand", figures: dict | None = None) -> dict:
        """Swap the challenger in as the champion and record it; the release ends."""
        with self.lock:
            rel = self._running()
            self.manager.install(rel.challenger, "release")
            self._end(rel, "promoted")
            self._record("promote", reason, figures or rel.stats.figures().as_dict(), rel.challenger.run_id)
            _close_sink(rel)
            return self.last or {}

    def abort(self, reason: str = "aborted by hand", figures: dict | None = None,
              action: str = "release_abort") -> dict:
        """Drop the challenger (the champion kept serving throughout) and record it."""
        with self.lock:
            rel = self._running()
            self._end(rel, "rolled_back" if action == "release_rollback" else "aborted")  # routing stops first
            rel.challenger.executor.shutdown(wait=False)
            self._record(action, reason, figures or rel.stats.figures().as_dict())
            _close_sink(rel)
            return self.last or {}

    def _record(self, action: str, reason: str, figures: dict, champion: str | None = None) -> None:
        """The end of the release in the promotion log; a store that fails now is retried at the next start
        of a worker (the open release is then closed as aborted), the serving state is already right."""
        try:
            event = self._log().close_open_release(action, reason, figures, champion=champion)
        except Exception as e:  # noqa: BLE001 - the swap or rollback happened; say the log is behind
            log.exception("could not record the release's end in the promotion log")
            if self.last is not None:
                self.last["log_error"] = _text(e)
            return
        if self.last is not None and event is not None:
            self.last["event_seq"] = event.seq

    def _running(self) -> Release:
        if self.release is None:
            raise ReleaseRefused(409, "no release in progress")
        return self.release

    def _end(self, rel: Release, state: str) -> dict:
        rel.state = state
        self.last = rel.status()
        self.release = None
        log.info("release of %s ended: %s", rel.challenger.run_id, state)
        return self.last

    def status(self) -> dict:
        rel = self.release
        return {"active": rel is not None, "release": rel.status() if rel else None, "last": self.last}

    # ---- the request path ----------------------------------------------------------------------------------
    async def predict(self, data: bytes, score_thr: float | None, key: str | None) -> tuple[dict, Role]:
        """The answer and the role of the model that gave it."""
        rel = self.release
        if rel is None:
            engine = self.manager.engine
            return await self._answer(engine, "champion", data, score_thr), "champion"
        self._ensure_loop(rel)
        role = rel.role_for(key)
        if role == "challenger":
            try:
                t0 = time.perf_counter()
                out, cpu_ms = await rel.challenger.predict_timed(data, score_thr)
                self._count(rel.challenger.run_id, "challenger", "answer", "ok", time.perf_counter() - t0)
            except RequestRefused:
                raise  # the image, not the model: the champion would refuse it the same way
            except Exception:  # noqa: BLE001 - a failing challenger must cost the client nothing
                log.exception("challenger %s failed; the champion answers", rel.challenger.run_id)
                rel.stats.challenger_call(False)
                self._count(rel.challenger.run_id, "challenger", "answer", "error", 0.0)
                role = "champion"
            else:
                rel.stats.challenger_call(True)
                rel.stats.latency("challenger", cpu_ms if cpu_ms is not None else 0.0)
        if role == "champion":
            out = await self._answer(rel.champion, "champion", data, score_thr, rel)
        mirror_to = rel.wants_mirror(role)
        if mirror_to is not None:
            rel.mirror(Mirror(data, score_thr, out["detections"], mirror_to))
        return out, role

    async def _answer(self, engine, role: Role, data: bytes, score_thr: float | None,
                      rel: Release | None = None) -> dict:
        t0 = time.perf_counter()
        try:
            out, cpu_ms = await engine.predict_timed(data, score_thr)
        except RequestRefused:
            raise
        except Exception:
            self._count(engine.run_id, role, "answer", "error", time.perf_counter() - t0)
            raise
        self._count(engine.run_id, role, "answer", "ok", time.perf_counter() - t0)
        if rel is not None and cpu_ms is not None:
            rel.stats.latency("champion", cpu_ms)
        return out

    def _count(self, run_id: str, role: str, path: str, outcome: str, seconds: float) -> None:
        if self.on_answer is not None:
            try:
                self.on_answer(str(run_id), role, path, outcome, seconds)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                log.exception("metrics hook failed")

    # ---- off the request path --------------------------------------------------------------------------------
    def _ensure_loop(self, rel: Release) -> None:
        """The release's two tasks, started by its first request (in the server's event loop); each ends when
        its release does, so a new release never waits on a task of an old one."""
        if self._task_for is not rel:
            loop = asyncio.get_running_loop()
            self._task_for = rel
            self._tasks = (loop.create_task(self._window_loop(rel)), loop.create_task(self._mirror_loop(rel)))

    async def _window_loop(self, rel: Release) -> None:
        """Close each window when it ends and act on its decision (a task of its own: a mirrored copy that
        waits for CPU never delays a rollback)."""
        while self.release is rel:
            await asyncio.sleep(min(1.0, max(0.0, rel.window_end - self.clock())))
            if self.release is rel and self.clock() >= rel.window_end:
                await self.close_window(rel)

    async def _mirror_loop(self, rel: Release) -> None:
        """Take the sink's results as they come (waiting in a thread of its own) and feed the window."""
        loop = asyncio.get_running_loop()
        while self.release is rel and rel.sink is not None:
            sink = rel.sink
            result = await loop.run_in_executor(self.executor, sink.next_result, 1.0)
            if self.release is not rel:
                return  # ended meanwhile: its figures are closed
            if result is not None:
                self._record_result(rel, result)
            elif not sink.alive:
                await self._restart_sink(loop, rel, sink)

    def _record_result(self, rel: Release, result: MirrorResult) -> None:
        item = rel.record_result(result)
        if item is None or result.outcome == "refused":
            return
        engine = rel.engine(item.role)
        if result.outcome == "error":
            log.warning("mirrored request failed on %s: %s", engine.run_id, result.error)
        self._count(engine.run_id, item.role, "mirror", result.outcome, result.wall_ms / 1000)

    async def _restart_sink(self, loop, rel: Release, sink: MirrorSink) -> None:
        """The mirror process died (a model that crashes it, the OOM killer): its copies in flight count as
        failures, and it is started again (after each death: a challenger that keeps crashing it is rolled back
        by the error-rate rule); if a start fails, copies are dropped until the release ends."""
        lost = rel.lose_pending()
        log.error("the release's mirror process died; %d copies in flight counted as failures; restarting", lost)
        try:
            await loop.run_in_executor(self.executor, sink.start)
        except MirrorStartError:
            log.exception("could not restart the mirror process: copies are dropped from now on")
            if self.release is rel:
                rel.sink = None

    async def close_window(self, rel: Release) -> Decision:
        """Close the window and act: a rollback or promotion is written to the log (in a thread)."""
        figures, decision = rel.close_window()
        log.info("release window %s: %s %s %s", figures.index, decision.verdict, decision.action,
                 "; ".join(decision.reasons))
        if decision.action == "continue":
            return decision
        why = f"automatic: {'; '.join(decision.reasons)}"
        try:
            if decision.action == "rollback":
                await asyncio.to_thread(self.abort, why, figures.as_dict(), "release_rollback")
            else:
                await asyncio.to_thread(self.promote, why, figures.as_dict())
        except ReleaseRefused:  # ended by an admin command in the meantime
            pass
        return decision


def _close_sink(rel: Release) -> None:
    """Stop the ended release's mirror (after its end is recorded: the log is what clients wait on)."""
    sink, rel.sink = rel.sink, None
    if sink is not None:
        sink.close()


def _text(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return f"{type(e).__name__}: {msg}"[:500]
