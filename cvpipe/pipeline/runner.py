"""The runner: resolves a step's inputs, reuses a cached run or creates a new one, materialises and loads the
input entities, calls the step, saves and commits the entities it returns, records its decisions and writes
the manifest. Steps never touch the store (see cvpipe.pipeline.step)."""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import cvpipe
from cvpipe.pipeline.code import code_fingerprint
from cvpipe.pipeline.entity import load_entity, save_entity
from cvpipe.pipeline.faults import fault_point
from cvpipe.pipeline.step import Decision, Produced, Resolved, SourceDigest, StepContext, StepSpec, get_step
from cvpipe.store.store import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_RUNNING,
    ArtifactStore,
    RunRecord,
    StoredFiles,
    new_run_id,
    no_space,
    utcnow,
)

log = logging.getLogger("cvpipe.runner")


def describe_error(e: BaseException) -> str:
    """One line a user can act on: a full disk says where; anything else is `Type: message`."""
    if no_space(e):
        filename = getattr(e, "filename", None)
        where = f" while writing {filename}" if filename else ""
        return (f"no space left on device{where}: free some space (or point the store, TMPDIR or CVPIPE_CACHE "
                f"elsewhere) and run again")
    return f"{type(e).__name__}: {e}"


class StepFailed(RuntimeError):
    """A step raised; its run is recorded as failed in the store."""

    def __init__(self, step: str, run_id: str, error: BaseException):
        super().__init__(f"step {step} failed (run {run_id}): {describe_error(error)}")
        self.step, self.run_id, self.error = step, run_id, error


class MissingInput(RuntimeError):
    pass


class SourceError(MissingInput):
    """A step's raw source cannot be read (not found, unsafe, over a limit): said before any run exists."""


@cache
def code_version(module: str | None = None) -> dict[str, Any]:
    """Package version, git commit (if any) and the fingerprint the cache keys on: of the step module's own
    code (the project modules it imports, see `cvpipe.pipeline.code`), or of the whole package when no
    module is named."""
    if module:
        info: dict[str, Any] = {"package_version": cvpipe.__version__, **code_fingerprint(module), "module": module}
    else:
        pkg = Path(cvpipe.__file__).parent
        h = hashlib.sha256()
        for p in sorted(pkg.rglob("*.py")):
            h.update(p.relative_to(pkg).as_posix().encode())
            h.update(p.read_bytes())
        info = {"package_version": cvpipe.__version__, "fingerprint": h.hexdigest()[:16]}
    info.update(_git_info())
    return info


@lru_cache(maxsize=1)
def _git_info() -> dict[str, Any]:
    top = Path(cvpipe.__file__).parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cvpipe"], cwd=top, capture_output=True,
                               text=True, timeout=5)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def config_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for k, v in rows.items():
        table.add_row(k, json.dumps(v) if not isinstance(v, str) else v)
    return table


class Runner:
    """Runs steps of one pipeline config against one store, sequentially in this process."""

    def __init__(self, cfg: Any, store: ArtifactStore | None = None, force: bool = False,
                 console: Console | None = None):
        self.cfg = cfg
        self.store = store or ArtifactStore.from_config(cfg)
        self.force = force
        self.console = console or Console(stderr=True)
        self.produced: dict[str, RunRecord] = {}  # runs made or reused in this invocation

    # ---- inputs -------------------------------------------------------------------------------
    def resolve_inputs(self, spec: StepSpec) -> dict[str, RunRecord | None]:
        """Input kw -> producing run: pinned, else made in this invocation, else latest complete."""
        pins = self.cfg.pins
        resolved: dict[str, RunRecord | None] = {}
        for kw, inp in spec.inputs.items():
            if inp.step == spec.name:
                rec = self.store.latest_run(spec.name)
            elif inp.step in pins:
                rec = self.store.get_run(pins[inp.step], step=inp.step)
                if not rec.complete:
                    raise MissingInput(f"pinned run {rec.run_id} of {inp.step} is {rec.status}, not complete")
            else:
                rec = self.produced.get(inp.step) or self.store.latest_run(inp.step)
            if rec is None and not inp.optional:
                raise MissingInput(
                    f"step {spec.name} needs {inp.step}.{inp.entity}, but the store "
                    f"{self.store.uri(self.store.pipeline_path)} has no complete run of {inp.step}: "
                    f"run `cvpipe step {inp.step} CONFIG` first, or include it in the pipeline")
            if rec is not None and inp.optional and inp.entity not in (rec.manifest.get("outputs") or {}):
                log.info("%s: run %s of %s has no %s (made before it existed): %s gets None", spec.name,
                         rec.run_id, inp.step, inp.entity, kw)
                rec = None
            if rec is not None:
                rec.output(inp.entity)  # fails clearly when that run lacks the entity
            resolved[kw] = rec
        return resolved

    def cache_key(self, spec: StepSpec, params: Any, inputs: dict[str, RunRecord | None],
                  source: SourceDigest | None = None, depends: dict[str, Any] | None = None) -> str:
        """sha256 of what decides a step's result: its params, its inputs' digests, the digest of the raw
        data it reads (steps with a source), the store state it depends on (steps with depends_on) and its
        own code."""
        digests = {kw: (rec.output(spec.inputs[kw].entity)["digest"] if rec else None)
                   for kw, rec in inputs.items() if spec.inputs[kw].step != spec.name}
        payload = {"step": spec.name, "params": params.model_dump(mode="json"), "inputs": digests,
                   "code": code_version(spec.func.__module__)["fingerprint"]}
        if source is not None:
            payload["source"] = source.digest
        if depends is not None:  # absent for other steps: their keys stay as they were
            payload["depends_on"] = depends
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def digest_source(self, spec: StepSpec, params: Any) -> SourceDigest | None:
        """The step's raw source, digested (None for steps that read only the store)."""
        if spec.source is None:
            return None
        try:
            return spec.source(params)
        except (OSError, ValueError) as e:
            raise SourceError(f"{spec.name}: cannot read its source: {type(e).__name__}: {e}") from e

    def read_dependencies(self, spec: StepSpec, params: Any, inputs: dict[str, RunRecord | None]
                          ) -> tuple[dict[str, Any] | None, dict[str, Resolved]]:
        """What the step's result depends on in the store beyond its inputs (None for most steps), and what its
        resolvers found there (handed to the step when it runs)."""
        runs = {kw: (rec.run_id if rec else None) for kw, rec in inputs.items()}
        resolved = {kw: resolver(params, self.store, runs) for kw, resolver in spec.resolve.items()}
        if spec.depends_on is None and not any(r.keyed for r in resolved.values()):
            return None, resolved  # nothing, or only what does not change the result (data_load's previous version)
        depends = dict(spec.depends_on(params, self.store, runs) or {}) if spec.depends_on else {}
        depends.update({kw: r.key for kw, r in resolved.items() if r.keyed})
        return json.loads(json.dumps(depends, sort_keys=True)), resolved  # JSON-able now

    # ---- running ------------------------------------------------------------------------------
    def run(self, steps: list[str]) -> list[RunRecord]:
        return [self.run_step(name) for name in steps]

    def run_step(self, name: str) -> RunRecord:
        spec = get_step(name)
        params = self.cfg.params(name)
        inputs = self.resolve_inputs(spec)
        source = self.digest_source(spec, params)
        depends, resolved = self.read_dependencies(spec, params, inputs)
        key = self.cache_key(spec, params, inputs, source, depends)
        if not self.force:
            cached = self.store.find_cached(name, key)
            if cached is not None:
                what = ("source" if source else "inputs") + (", " + ", ".join(depends) if depends else "")
                what += ", params and code"
                self.console.print(f"[bold cyan]{name}[/]: {what} unchanged -> reusing run "
                                   f"[bold]{cached.run_id}[/] (use --force to rerun)")
                self.produced[name] = cached
                return cached
        return self._execute(spec, params, inputs, key, source, depends, resolved)

    def _manifest(self, spec: StepSpec, params: Any, inputs: dict[str, RunRecord | None], key: str,
                  run_id: str, source: SourceDigest | None, depends: dict[str, Any] | None) -> dict[str, Any]:
        """The run's record as written first ("running"); outputs, summary and status are filled in later."""
        store = self.store
        manifest: dict[str, Any] = {
            "schema": 1, "run_id": run_id, "step": spec.name, "env": store.env, "pipeline": store.pipeline,
            "status": STATUS_RUNNING, "params": params.model_dump(mode="json"),
            "config": self.cfg.model_dump(mode="json", exclude_none=True),
            "inputs": {kw: ({"step": r.step, "run_id": r.run_id, "entity": spec.inputs[kw].entity,
                             "uri": r.output(spec.inputs[kw].entity)["uri"],
                             "digest": r.output(spec.inputs[kw].entity)["digest"]} if r else None)
                       for kw, r in inputs.items()},
            "outputs": {}, "summary": {}, "cache_key": key, "code": code_version(spec.func.__module__),
            "started_at": utcnow(), "host": socket.gethostname(), "pid": os.getpid(),
            "user": getpass.getuser(), "python": platform.python_version(),
        }
        if source is not None:
            manifest["source"] = source.record()
        if depends is not None:
            manifest["depends_on"] = depends
        return manifest

    def _print_config(self, spec: StepSpec, params: Any, inputs: dict[str, RunRecord | None], run_id: str,
                      source: SourceDigest | None, depends: dict[str, Any] | None) -> None:
        store = self.store
        rows: dict[str, Any] = {"store": store.url, "env": store.env, "pipeline": store.pipeline, "step": spec.name,
                                "run_id": run_id}
        rows.update({f"{spec.name}.{k}": v for k, v in params.model_dump(mode="json").items()})
        rows.update({f"input.{kw}": (f"{r.step}/{r.run_id}" if r else None) for kw, r in inputs.items()})
        if source is not None:
            rows["source.digest"] = f"sha256 {source.digest[:16]}... ({source.files} files)"
        rows.update({f"depends_on.{k}": json.dumps(v) for k, v in (depends or {}).items()})
        self.console.print(config_table(f"{spec.name}: effective config", rows))

    def _execute(self, spec: StepSpec, params: Any, inputs: dict[str, RunRecord | None], key: str,
                 source: SourceDigest | None = None, depends: dict[str, Any] | None = None,
                 resolved: dict[str, Resolved] | None = None) -> RunRecord:
        run_id = new_run_id()
        self._print_config(spec, params, inputs, run_id, source, depends)
        manifest = self._manifest(spec, params, inputs, key, run_id, source, depends)
        resumable = None if self.force else self.store.find_resumable(spec.name, key)  # --force starts afresh
        try:
            self.store.write_manifest(manifest)
        except OSError as e:  # nothing of the run exists yet: just say why
            raise StepFailed(spec.name, run_id, e) from e
        fault_point(spec.name, "start")
        staging = Path(tempfile.mkdtemp(prefix=f"cvpipe-{spec.name}-"))
        step_log = _StepLog(staging / "step.log")
        try:
            ctx = self._context(spec, run_id, staging, resumable, manifest, source)
            manifest["outputs"], summary = self._call(spec, params, ctx, inputs, resolved or {})
            manifest.update(status=STATUS_COMPLETE, summary=summary)
        except BaseException as e:  # KeyboardInterrupt too: the run is recorded, then the error goes on
            self._record_failure(spec, manifest, e, staging)
            self._close(manifest, step_log, staging)
            if isinstance(e, Exception):
                raise StepFailed(spec.name, run_id, e) from e
            raise
        self._close(manifest, step_log, staging)
        rec = RunRecord(run_id, spec.name, manifest)
        self.produced[spec.name] = rec
        where = self.store.uri(self.store.run_path(spec.name, run_id))
        self.console.print(f"[bold green]{spec.name}[/]: run [bold]{run_id}[/] complete in "
                           f"{manifest['duration_s']:.1f} s -> {where}")
        return rec

    def _context(self, spec: StepSpec, run_id: str, staging: Path, resumable: RunRecord | None,
                 manifest: dict[str, Any], source: SourceDigest | None) -> StepContext:
        """Empty output, scratch and state folders in `staging`; the state of a dead run to resume from."""
        store, state = self.store, staging / "state"
        ctx = StepContext(step=spec.name, run_id=run_id, outputs={o: staging / "out" / o for o in spec.outputs},
                          scratch=staging / "scratch", state=state, source=source,
                          input_runs={kw: v["run_id"] if v else None for kw, v in manifest["inputs"].items()})
        for p in [*ctx.outputs.values(), ctx.scratch, state]:
            p.mkdir(parents=True)

        def save_state() -> None:
            store.put_state(spec.name, run_id, state)
            fault_point(spec.name, "state_saved")

        ctx.on_save_state = save_state
        ctx.on_decide = lambda decision: record(store, spec.name, run_id, decision)
        if resumable is not None:
            ctx.resume = store.get_state(resumable, staging / "resume")
            manifest["resumed_from"] = resumable.run_id
            self.console.print(f"[bold cyan]{spec.name}[/]: resuming from the state of interrupted run "
                               f"{resumable.run_id}")
        return ctx

    def _call(self, spec: StepSpec, params: Any, ctx: StepContext, inputs: dict[str, RunRecord | None],
              resolved: dict[str, Resolved]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Materialise (and verify) the inputs, call the step, commit its outputs: (outputs, summary)."""
        store = self.store
        local_inputs = {kw: self._input(spec, kw, r) for kw, r in inputs.items()}
        log.info("running %s (run %s)", spec.name, ctx.run_id)
        stored: dict[str, tuple[StoredFiles, Path | None]] = {}
        summary = invoke(spec, params, ctx, local_inputs, {kw: r.load() for kw, r in resolved.items()}, stored)
        fault_point(spec.name, "before_commit")
        outputs: dict[str, Any] = {}
        for name, out in spec.outputs.items():
            if name in stored:  # files that are objects of this store already: their index is the commit
                files, added = stored[name]
                outputs[name] = store.commit_stored(spec.name, ctx.run_id, name, files, added)
            else:
                outputs[name] = store.commit_entity(spec.name, ctx.run_id, name, ctx.outputs[name],
                                                    content_addressed=out.content_addressed)
            fault_point(spec.name, "mid_commit")
        return outputs, summary

    def _input(self, spec: StepSpec, kw: str, rec: RunRecord | None) -> Any:
        """An input as the step gets it: a verified local folder, or, for an entity class that reads a local
        store's objects through (`from_store`: ImageFiles), the objects (their index checked, each one there),
        a way to check the contents of those the step reads, and a way to build the folder if the step asks
        for it (a folder of 100,000 links per version was most of materialising one)."""
        if rec is None:
            return None
        entity = spec.inputs[kw].entity
        from_store = getattr(spec.input_classes().get(kw), "from_store", None)
        view = self.store.object_view(rec, entity, verify=False) if from_store is not None else None
        if from_store is None or view is None:
            return self.store.materialize(rec, entity)
        return from_store(view, lambda: self.store.materialize(rec, entity),
                          lambda names: self.store.verify_objects(view, names))

    def _record_failure(self, spec: StepSpec, manifest: dict[str, Any], e: BaseException, staging: Path) -> None:
        manifest.update(status=STATUS_FAILED,
                        error={"type": type(e).__name__, "message": describe_error(e) if no_space(e) else str(e),
                               "traceback": traceback.format_exc()})
        log.error("%s failed: %s", spec.name, describe_error(e))
        # A full disk gets nothing more written to it; other failures keep what the step wrote
        if isinstance(e, Exception) and not no_space(e):
            manifest["outputs"] = self._keep_for_diagnosis(spec, manifest["run_id"], staging)
        else:
            manifest["outputs"] = {}

    def _keep_for_diagnosis(self, spec: StepSpec, run_id: str, staging: Path) -> dict[str, Any]:
        """What a failed step wrote (e.g. the report explaining a failed gate), stored with the failed run.
        Readers never take outputs of a failed run as inputs."""
        kept: dict[str, Any] = {}
        for name, out in spec.outputs.items():
            local = staging / "out" / name
            if local.is_dir() and any(local.iterdir()):
                try:
                    kept[name] = self.store.commit_entity(spec.name, run_id, name, local, out.content_addressed)
                except OSError as err:
                    log.warning("could not keep %s of the failed run: %s", name, err)
        return kept

    def _close(self, manifest: dict, step_log: _StepLog, staging: Path) -> None:
        """Store the log and write the manifest last (what makes the run complete or failed); the staging
        folder goes whatever happens. A manifest that cannot be written leaves the run 'interrupted'."""
        manifest.update(ended_at=utcnow(), duration_s=round(time.monotonic() - step_log.started, 3))
        step_log.close()
        try:
            manifest["log"] = self.store.put_log(manifest["step"], manifest["run_id"], step_log.path)
        except OSError as e:
            log.warning("could not store the log: %s", e)
        try:
            self.store.write_manifest(manifest)
        except OSError as e:
            if manifest["status"] == STATUS_COMPLETE:
                raise
            log.error("could not record run %s as failed (%s); it will show as interrupted",
                      manifest["run_id"], describe_error(e))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def invoke(spec: StepSpec, params: Any, ctx: StepContext, local_inputs: dict[str, Any],
           extra: dict[str, Any] | None = None, stored: dict[str, tuple[StoredFiles, Path | None]] | None = None
           ) -> dict[str, Any]:
    """Load the input entities from their local directories (or take those the runner built), call the step,
    save the entities it returns into ctx.outputs: the summary. The one place a step is called (the runner;
    tests call it too). With `stored`, a content-addressed output whose files are objects of the store already
    (`.stored`, plus a folder of new ones in `.added`) is put there instead of saved: the runner commits its
    index (and stores the new files)."""
    classes = spec.input_classes()
    loaded = {kw: load_entity(classes.get(kw), path) if path is None or isinstance(path, Path) else path
              for kw, path in local_inputs.items()}
    result = spec.func(params, ctx, **loaded, **(extra or {}))
    if isinstance(result, Produced):
        unknown = set(result.entities) - set(spec.outputs)
        missing = set(spec.outputs) - set(result.entities)
        if unknown or missing:
            raise TypeError(f"step {spec.name} returned entities {sorted(result.entities)}; it declares "
                            f"{sorted(spec.outputs)}")
        for name, value in result.entities.items():
            files = getattr(value, "stored", None) if spec.outputs[name].content_addressed else None
            if stored is not None and files is not None and isinstance(value, spec.outputs[name].entity or object):
                stored[name] = (files, getattr(value, "added", None))
                continue
            save_entity(value, ctx.output(name), spec.outputs[name].entity, f"{spec.name}.{name}")
        summary = result.summary
    else:
        summary = result or {}
    json.dumps(summary)  # the summary must be JSON-able: fail inside the run, not after it
    return summary


def record(store: ArtifactStore, step: str, run_id: str, decision: Decision) -> str:
    """Record a step's Decision in the promotion log; says what happened."""
    from cvpipe.store.promotion import record_decision

    event = record_decision(store, step=step, step_run_id=run_id, model_run_id=decision.model_run_id,
                            passed=decision.passed, promote_on_pass=decision.promote_on_pass,
                            reason=decision.reason, metrics=decision.metrics, decision=decision.record)
    if event is None:
        return "already champion" if decision.passed and decision.promote_on_pass else "nothing to record"
    done = {"promote": "promoted", "demote": "demoted", "refuse": "refused"}.get(event.action, event.action)
    return f"{done} (event {event.seq})"


class _StepLog:
    """The run's own log file (INFO and up from every logger) while the step runs."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.monotonic()
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)
        if logging.getLogger("cvpipe").getEffectiveLevel() > logging.INFO:
            logging.getLogger("cvpipe").setLevel(logging.INFO)  # the stored log keeps INFO even when quiet

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def select_steps(available: list[str], steps: list[str] | None = None, start: str | None = None,
                 end: str | None = None) -> list[str]:
    """The steps to run, in dependency order: all configured, or a subset / a from..to range."""
    from cvpipe.pipeline.step import execution_order

    order = execution_order(available)
    for n in [*(steps or []), *([start] if start else []), *([end] if end else [])]:
        if n not in order:
            raise ValueError(f"step {n!r} is not in this pipeline (it has: {', '.join(order)})")
    if steps:
        return [n for n in order if n in steps]
    i = order.index(start) if start else 0
    j = order.index(end) + 1 if end else len(order)
    return order[i:j]
