"""Model promotion: which packed model is served, as an append-only log of events in the store.

    {store}/{env}/{pipeline}/_promotions/000001-20261124T170604885Z.json
    {store}/{env}/{pipeline}/_promotions/000002-20261124T171212001Z.json   ...

Each event says who (user@host), what (the model_pack run), when, why, the metrics that justified it, the
evaluation run behind it and the champion it replaced. An event file is created once (exclusively, whole or
not at all) and never rewritten; the current champion is the `champion` field of the last event that counts.
An event written by a step (model_eval, model_test) counts only once that step's run is complete, so a run
that fails after deciding never changes what is served.

This is the model-registry alias of MLflow or TF Serving's version policy: `cvpipe serve`, `--follow` and
`/admin/reload latest` serve the champion, never merely the newest model_pack run. Torch-free: the Bento
carries this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cvpipe.store.store import ArtifactStore, RunRecord

try:  # the store's strict check (cvpipe.store.paths) once it has landed
    from cvpipe.store.paths import validate_run_id
except ImportError:  # pragma: no cover - same pattern, kept until then
    _RUN_ID_RE = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{6}")

    def validate_run_id(run_id: object) -> str:
        if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
            raise KeyError(f"not a run id: {str(run_id)[:80]!r} (run ids look like 20261124T170604885Z-53dc07)")
        return run_id

log = logging.getLogger(__name__)

PROMOTIONS = "_promotions"
EVENT_FILE_RE = re.compile(r"(\d{6})-(\d{8}T\d{9}Z)\.json")
ACTIONS = ("promote", "rollback", "demote", "refuse",  # refuse: recorded, champion unchanged
           "release_start", "release_rollback", "release_abort")  # a live release (champion unchanged)
RELEASE_ACTIONS = ("release_start", "release_rollback", "release_abort")
SCHEMA = 1


class PromotionError(RuntimeError):
    """A promotion that may not happen (unknown run, not a model_pack run, evaluation not passed, ...)."""


@dataclass(frozen=True)
class PromotionEvent:
    seq: int
    data: dict[str, Any]

    @property
    def action(self) -> str:
        return self.data["action"]

    @property
    def champion(self) -> str | None:
        return self.data.get("champion")

    @property
    def run_id(self) -> str | None:
        return self.data.get("run_id")

    @property
    def requires_run(self) -> dict | None:
        """{"step", "run_id"} of the step run whose completion makes this event count, or None."""
        return self.data.get("requires_run")


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


def _parse_event(seq: int, data: Any) -> PromotionEvent:
    """Store contents are untrusted: an event is used only when its fields have the expected shape."""
    if not isinstance(data, dict) or data.get("action") not in ACTIONS:
        raise ValueError("not a promotion event")
    for key in ("champion", "run_id", "previous"):
        if data.get(key) is not None:
            validate_run_id(data[key])
    req = data.get("requires_run")
    if req is not None:
        if not isinstance(req, dict) or req.get("step") not in ("model_eval", "model_test"):
            raise ValueError("bad requires_run")
        validate_run_id(req.get("run_id"))
    return PromotionEvent(seq, data)


class PromotionLog:
    """The promotion events of one pipeline of a store."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.path = f"{store.pipeline_path}/{PROMOTIONS}"
        self._complete_runs: set[str] = set()  # step runs seen complete (committed runs never change)

    # ---- reading ------------------------------------------------------------------------------
    def events(self, effective_only: bool = True) -> list[PromotionEvent]:
        """Events in order; with `effective_only`, those whose step run has not completed are left out."""
        fs = self.store.fs
        if not fs.exists(self.path):
            return []
        found = []
        for path in fs.ls(self.path, detail=False):
            m = EVENT_FILE_RE.fullmatch(path.rsplit("/", 1)[-1])
            if not m:
                continue  # temp files, foreign files
            try:
                found.append(_parse_event(int(m.group(1)), self.store.read_json(path)))
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable promotion event %s: %s", path.rsplit("/", 1)[-1], e)
        found.sort(key=lambda e: (e.seq, e.data.get("at", "")))
        return [e for e in found if not effective_only or self._counts(e)]

    def _last_seq(self) -> int:
        """The highest event number on file, readable or not (a number is never used twice)."""
        fs = self.store.fs
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(self.path, detail=False)] if fs.exists(self.path) else []
        return max((int(m.group(1)) for m in map(EVENT_FILE_RE.fullmatch, names) if m), default=0)

    def _counts(self, event: PromotionEvent) -> bool:
        req = event.requires_run
        if req is None or req["run_id"] in self._complete_runs:
            return True
        try:
            rec = self.store.get_run(req["run_id"], step=req["step"])
        except KeyError:
            return False
        if rec.complete:
            self._complete_runs.add(rec.run_id)
        return rec.complete

    def champion_id(self) -> str | None:
        events = self.events()
        return events[-1].champion if events else None

    def champion(self) -> RunRecord | None:
        """The champion's model_pack run; None when nothing was promoted (or the champion is unusable)."""
        rid = self.champion_id()
        if rid is None:
            return None
        try:
            rec = self.store.get_run(rid, step="model_pack")
        except KeyError:
            log.error("the champion %s is not a model_pack run of this store; nothing is servable", rid)
            return None
        if not rec.complete:
            log.error("the champion %s is %s, not complete; nothing is servable", rid, rec.status)
            return None
        return rec

    def rollback_target(self) -> str | None:
        """The champion before the current one: `previous` of the newest promote that made it champion."""
        events = self.events()
        current = events[-1].champion if events else None
        for event in reversed(events):
            if event.action == "promote" and event.champion == current:
                return event.data.get("previous")
        return None

    # ---- writing --------------------------------------------------------------------------------
    def append(self, action: str, champion: str | None, *, run_id: str | None, reason: str,
               source: str = "cli", metrics: dict | None = None, eval_run_id: str | None = None,
               requires_run: dict | None = None, forced: bool = False,
               decision: dict | None = None, extra: dict | None = None) -> PromotionEvent:
        """Write one event with the next number; never rewrites one. `extra`: more fields (a release's plan)."""
        with self._writer_lock():
            return self._append_locked(action, champion, run_id=run_id, reason=reason, source=source,
                                       metrics=metrics, eval_run_id=eval_run_id, requires_run=requires_run,
                                       forced=forced, decision=decision, extra=extra)

    def _append_locked(self, action: str, champion: str | None, *, run_id: str | None, reason: str, source: str,
                       metrics: dict | None, eval_run_id: str | None, requires_run: dict | None, forced: bool,
                       decision: dict | None, extra: dict | None) -> PromotionEvent:
        """The body of append(), called with the writer lock held."""
        seq = self._last_seq() + 1
        now = _now()
        data = {"schema": SCHEMA, "seq": seq, "action": action, "run_id": run_id, "champion": champion,
                "previous": self.champion_id(), "at": now.isoformat(timespec="milliseconds"), "by": who(),
                "reason": reason, "source": source, "eval_run_id": eval_run_id, "metrics": metrics or {},
                "forced": forced, "requires_run": requires_run}
        if decision is not None:  # model_eval's gate: verdict, criteria, interval, data digest, seed
            data["decision"] = decision
        for key, value in (extra or {}).items():
            data.setdefault(key, value)
        event = _parse_event(seq, data)
        path = f"{self.path}/{seq:06d}-{_stamp(now)}.json"
        if self.store.fs.exists(path):  # cannot happen under the lock; never overwrite regardless
            raise PromotionError(f"promotion event {seq} exists already")
        self.store.write_json(path, data)  # temp file + rename locally, one whole put on object stores
        log.info("promotion log: %s %s -> champion %s (%s)", action, run_id, champion, reason)
        return event

    def open_release(self) -> PromotionEvent | None:
        """The `release_start` event of a release that has not ended (no later release end or promotion)."""
        for event in reversed(self.events()):
            if event.action == "release_start":
                return event
            if event.action in RELEASE_ACTIONS or event.data.get("source") == "release":
                return None
        return None

    def start_release(self, run_id: str, reason: str, plan: dict) -> PromotionEvent:
        """Record the start of a release of `run_id` against the champion; PromotionError while another is open."""
        with self._writer_lock():
            open_ = self.open_release()
            if open_ is not None:
                raise PromotionError(f"a release of {open_.run_id} is in progress (event {open_.seq}); "
                                     f"`cvpipe release abort` it first")
            return self._append_locked("release_start", self.champion_id(), run_id=run_id, reason=reason,
                                       source="release", metrics=None, eval_run_id=None, requires_run=None,
                                       forced=False, decision=None, extra={"plan": plan})

    def close_open_release(self, action: str, reason: str, metrics: dict | None = None,
                           champion: str | None = None) -> PromotionEvent | None:
        """End the open release (action release_rollback | release_abort, or promote with `champion` = its
        challenger), if there still is one when the lock is held (several workers or services may try at once:
        exactly one event is written)."""
        with self._writer_lock():
            start = self.open_release()
            if start is None:
                return None
            return self._append_locked(action, champion or self.champion_id(), run_id=start.run_id, reason=reason,
                                       source="release", metrics=metrics, eval_run_id=None, requires_run=None,
                                       forced=False, decision=None, extra={"release_seq": start.seq})

    @contextlib.contextmanager
    def _writer_lock(self):
        """Local stores: an flock (released even on kill -9) serialises writers, so numbers never repeat.
        Object stores have no lock: two writers in the same instant could both take one number; readers
        then order them by file name and both are kept."""
        if not self.store.is_local:
            yield
            return
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# ---- the operations the CLI and the steps call ----------------------------------------------------------

def evaluation_of(store: ArtifactStore, model_run_id: str) -> RunRecord | None:
    """The newest complete model_eval run that evaluated this model_pack run, or None."""
    for rec in reversed(store.list_runs("model_eval")):
        inp = (rec.manifest.get("inputs") or {}).get("model") or {}
        if rec.complete and inp.get("run_id") == model_run_id:
            return rec
    return None


def _model_pack_run(store: ArtifactStore, run_id: str) -> RunRecord:
    validate_run_id(run_id)
    try:
        rec = store.get_run(run_id, step="model_pack")
    except KeyError:
        raise PromotionError(f"no model_pack run {run_id} in {store.uri(store.pipeline_path)} "
                             f"(see `cvpipe runs --step model_pack`)") from None
    if not rec.complete:
        raise PromotionError(f"model_pack run {run_id} is {rec.status}, not complete")
    return rec


def promote(store: ArtifactStore, run_id: str, reason: str = "", force: bool = False,
            accept_risk: bool = False) -> PromotionEvent:
    """Make a model_pack run the champion by hand. Its evaluation must have passed its gate, unless
    `force` (which needs a reason, recorded with the event). `accept_risk` (recorded) lets following services
    swap to it although it disagrees with the live model on the live model's test image."""
    _model_pack_run(store, run_id)
    ev = evaluation_of(store, run_id)
    gate = ((ev.manifest.get("summary") or {}).get("gate") or {}) if ev else {}
    if not gate.get("passed"):
        why = "it has no complete model_eval run" if ev is None else \
            f"its evaluation {ev.run_id} did not pass: {gate.get('message', 'no gate result')}"
        if not force:
            raise PromotionError(f"refusing to promote {run_id}: {why} (--force with --reason to override)")
        if not reason.strip():
            raise PromotionError("--force needs a --reason: it is recorded with the promotion")
    log_ = PromotionLog(store)
    if log_.champion_id() == run_id:
        raise PromotionError(f"{run_id} is already the champion")
    metrics = (ev.manifest.get("summary") or {}) if ev else {}
    return log_.append("promote", run_id, run_id=run_id, reason=reason or "promoted by hand", forced=force,
                       metrics=_headline(metrics), eval_run_id=ev.run_id if ev else None,
                       extra={"accept_risk": True} if accept_risk else None)


def rollback(store: ArtifactStore, to_run_id: str | None = None, reason: str = "") -> PromotionEvent:
    """Make an earlier champion the champion again (default: the one before the current)."""
    log_ = PromotionLog(store)
    target = to_run_id or log_.rollback_target()
    if target is None:
        raise PromotionError("nothing to roll back to: the champion was the first one promoted")
    _model_pack_run(store, target)
    if target not in {e.champion for e in log_.events()}:
        raise PromotionError(f"{target} was never champion; use `cvpipe promote` for a new model")
    if log_.champion_id() == target:
        raise PromotionError(f"{target} is already the champion")
    return log_.append("rollback", target, run_id=target, reason=reason or "rollback")


def servable_run(store: ArtifactStore) -> RunRecord | None:
    """The model_pack run to serve by default: the champion (None when nothing passed evaluation)."""
    return PromotionLog(store).champion()


def _headline(summary: dict) -> dict:
    keys = ("AP", "AP50", "images", "gate", "baseline")
    return {k: summary[k] for k in keys if k in summary}


# ---- what the steps record -------------------------------------------------------------------------------

def record_decision(store: ArtifactStore, *, step: str, step_run_id: str, model_run_id: str, passed: bool,
                    promote_on_pass: bool, reason: str, metrics: dict,
                    decision: dict | None = None) -> PromotionEvent | None:
    """A step's verdict on a model_pack run, with the gate's decision record when model_eval made one.

    model_eval: passed + promote_on_pass -> the model becomes champion once the eval run is complete; not passed
    (held or refused) -> a `refuse` event at once, the champion unchanged. model_test: failed -> if the model is
    champion, it is demoted to the previous one; otherwise a `refuse` event. A passed test changes nothing.
    """
    log_ = PromotionLog(store)
    req = {"step": step, "run_id": step_run_id}
    champion = log_.champion_id()
    common: dict[str, Any] = dict(run_id=model_run_id, reason=reason, source=step, metrics=metrics,
                  eval_run_id=step_run_id if step == "model_eval" else None, decision=decision)
    if passed:
        if not promote_on_pass or champion == model_run_id or step != "model_eval":
            return None
        return log_.append("promote", model_run_id, requires_run=req, **common)
    if step == "model_eval":  # the gate does not demote: a candidate it holds or refuses is simply not promoted
        return log_.append("refuse", champion, **common)
    # a veto counts at once, although its step run ends failed: serving less is the safe side
    if champion == model_run_id:
        return log_.append("demote", log_.rollback_target(), **common)
    return log_.append("refuse", champion, **common)


def history_rows(store: ArtifactStore) -> list[dict]:
    """Every event (those still waiting for their step run marked), oldest first, for `cvpipe promotions`."""
    log_ = PromotionLog(store)
    rows = []
    for event in log_.events(effective_only=False):
        d = event.data
        rows.append({"seq": event.seq, "at": d.get("at"), "action": d.get("action"), "run_id": d.get("run_id"),
                     "champion": d.get("champion"), "previous": d.get("previous"), "by": d.get("by"),
                     "source": d.get("source"), "reason": d.get("reason"), "eval_run_id": d.get("eval_run_id"),
                     "metrics": d.get("metrics", {}), "forced": d.get("forced", False), "decision": d.get("decision"),
                     "counts": log_._counts(event)})
    return rows
