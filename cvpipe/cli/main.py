"""`cvpipe`: run the pipeline, inspect runs, serve and use models."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.logging import RichHandler
from rich.table import Table
from rich.tree import Tree

from cvpipe.cli.common import (
    AllowPluginOpt,
    ConfigOpt,
    SetOpt,
    StoreOpt,
    brief_summary,
    console,
    cvpipe_command,
    fail,
    failed_run_note,
    load,
    open_store,
    out,
    pick_config,
)
from cvpipe.config import did_you_mean
from cvpipe.pipeline.runner import MissingInput, Runner, StepFailed, select_steps
from cvpipe.pipeline.step import has_step, registry
from cvpipe.store import ArtifactStore, RunRecord

app = typer.Typer(
    help="cvpipe: a detection model's whole life as a versioned pipeline: data_load -> data_prep -> "
         "model_train -> model_pack -> model_eval / model_test, then a served model. Every command that reads a "
         "config takes -c/--config (run and step also take it positionally) and --set key=value.",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)

ConfigArg = typer.Argument(None, help="Pipeline config YAML (e.g. configs/example.yaml); or -c/--config.",
                           show_default=False)
ForceOpt = typer.Option(False, "--force", "-f", help="Rerun even when a run with the same inputs, params and "
                                                     "code exists.")
RehashOpt = typer.Option(False, "--rehash", help="Read every data file again instead of trusting the digests "
                                                 "recorded for files whose inode, size and mtime are unchanged "
                                                 "(catches an edit that kept both size and mtime).")


def _set_rehash(rehash: bool) -> None:
    """--rehash reaches every digest (source, store commits, verified reads) through the environment, so worker
    processes see it too; it is not a param: an unchanged digest still reuses its run."""
    from cvpipe.store.digests import REHASH_ENV

    if rehash:
        os.environ[REHASH_ENV] = "1"


def setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "urllib3", "botocore", "s3fs", "aiobotocore", "fsspec", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _execute(cfg: Any, names: list[str], force: bool, config: Path) -> None:
    runner = Runner(cfg, force=force, console=console)
    try:
        runs = runner.run(names)
    except StepFailed as e:
        fail(f"{e}\n  {failed_run_note(runner.store, e.run_id, config)}")
    except MissingInput as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; the current run is recorded as failed, committed runs are untouched", 130)
    _print_runs(runs, config)


def _print_runs(runs: list[RunRecord], config: Path) -> None:
    table = Table(title="pipeline runs", title_justify="left")
    for col in ("step", "run_id", "summary"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(r.step, r.run_id, brief_summary(r.manifest.get("summary")))
    console.print(table)
    for r in runs:
        report = (r.manifest.get("outputs") or {}).get("report")
        if report:
            console.print(f"[bold]{r.step} report:[/] {report['uri']}/report.html", highlight=False)
    for r in runs:
        gain = (r.manifest.get("summary") or {}).get("gain") if r.step == "model_eval" else None
        if gain:
            console.print(f"[bold]what fine-tuning gained:[/] {gain['message']}", highlight=False)
    if any(r.step == "model_pack" for r in runs):
        console.print(f"[bold green]serve the model:[/] {cvpipe_command()} serve -c {config}   "
                      f"(then open http://127.0.0.1:3000)", highlight=False)


def _select(cfg: Any, config: Path, steps: Optional[str], start: Optional[str], end: Optional[str]) -> list[str]:
    for name in [x.strip() for x in (steps or "").split(",") if x.strip()] + [x for x in (start, end) if x]:
        _known_step(name)
    try:
        names = select_steps(cfg.step_names(), [x.strip() for x in steps.split(",")] if steps else None, start, end)
    except ValueError as e:
        fail(str(e), 2)
    if not names:
        fail(f"{config} has no step sections; known steps: {', '.join(registry())}", 2)
    return names


def _known_step(name: str) -> None:
    """Exit 2 with the known steps when `name` is none of them (only then are all step modules imported)."""
    if not has_step(name):
        known = list(registry())
        fail(f"unknown step {name!r}{did_you_mean(name, known)}; known steps: {', '.join(known)}", 2)


@app.command()
def run(
    config: Optional[Path] = ConfigArg,
    config_opt: Optional[Path] = ConfigOpt,
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated subset of steps to run."),
    start: Optional[str] = typer.Option(None, "--from", help="Run from this step on."),
    end: Optional[str] = typer.Option(None, "--to", help="Run up to and including this step."),
    force: bool = ForceOpt,
    rehash: bool = RehashOpt,
    overrides: Optional[list[str]] = SetOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the pipeline: every step that has a section in CONFIG, in dependency order.

    Each step reads the latest complete (or pinned) runs of the steps it depends on, and reuses an
    existing run when its inputs, params and code are unchanged.
    """
    setup_logging(verbose)
    _set_rehash(rehash)
    config = pick_config(config, config_opt, required=True)
    cfg = load(config, overrides, allow_plugin)
    _execute(cfg, _select(cfg, config, steps, start, end), force, config)


@app.command()
def step(
    name: str = typer.Argument(..., help="Step to run, e.g. data_prep."),
    config: Optional[Path] = ConfigArg,
    config_opt: Optional[Path] = ConfigOpt,
    force: bool = ForceOpt,
    rehash: bool = RehashOpt,
    overrides: Optional[list[str]] = SetOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run one step; its inputs come from the latest complete (or pinned) runs in the store."""
    setup_logging(verbose)
    _set_rehash(rehash)
    config = pick_config(config, config_opt, required=True)
    cfg = load(config, overrides, allow_plugin)
    _known_step(name)
    _execute(cfg, [name], force, config)


@app.command()
def steps() -> None:
    """List the registered steps with their inputs and outputs."""
    table = Table(title="steps", title_justify="left")
    for col in ("step", "inputs", "outputs", "description"):
        table.add_column(col, overflow="fold")
    for name, spec in registry().items():
        classes = spec.input_classes()
        ins = ", ".join(f"{k}: {_cls(classes[k])} <- {i.step}.{i.entity}{'?' if i.optional else ''}"
                        for k, i in spec.inputs.items())
        outs = ", ".join(f"{o}: {_cls(v.entity)}" + (" (content-addressed)" if v.content_addressed else "")
                         for o, v in spec.outputs.items())
        table.add_row(name, ins, outs, spec.description)
    out.print(table)


def _cls(entity: type | None) -> str:
    return entity.__name__ if entity is not None else "folder"


def _run_row(r: RunRecord) -> dict[str, Any]:
    m = r.manifest
    return {"run_id": r.run_id, "step": r.step, "status": r.status, "started_at": m.get("started_at"),
            "duration_s": m.get("duration_s"), "summary": m.get("summary", {}),
            "error": (m.get("error") or {}).get("message")}


@app.command()
def runs(
    step: Optional[str] = typer.Option(None, "--step", help="Only runs of this step."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    store: Optional[str] = StoreOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (run_id, step, status, ...)."),
) -> None:
    """List the runs in the store, oldest first."""
    st = open_store(pick_config(None, config), overrides, allow_plugin, store)
    records = [_run_row(r) for r in st.list_runs(step)]
    if as_json:
        out.print_json(json.dumps(records, default=str))
        return
    table = Table(title=f"runs in {st.uri(st.pipeline_path)}", title_justify="left")
    wide = out.width >= 120  # the summary column only where it fits
    for col in ("run_id", "step", "status", "started", "seconds"):
        table.add_column(col, no_wrap=True)
    if wide:
        table.add_column("summary", overflow="ellipsis", no_wrap=True, max_width=out.width - 90)
    colors = {"complete": "green", "failed": "red", "running": "yellow", "interrupted": "magenta"}
    for r in records:
        c = colors.get(r["status"], "white")
        cells = [r["run_id"], r["step"], f"[{c}]{r['status']}[/]", str(r["started_at"] or "")[5:19].replace("T", " "),
                 f"{r['duration_s'] or 0:.1f}"]
        table.add_row(*cells, *([r["error"] or brief_summary(r["summary"])] if wide else []))
    out.print(table)


def lineage(st: ArtifactStore, rec: RunRecord) -> dict[str, Any]:
    """The lineage DAG of a run: {"root": run id, "runs": {run id: node}}; each run appears once, however
    many consumers it has. A node: step, status, inputs {keyword: {run_id, entity, digest}} and, for data_load,
    the raw source (and the digest of what was read, when recorded)."""
    runs: dict[str, dict[str, Any]] = {}
    todo = [rec]
    while todo:
        r = todo.pop()
        if r.run_id in runs:
            continue
        node: dict[str, Any] = {"step": r.step, "status": r.status, "inputs": {}}
        for kw, inp in (r.manifest.get("inputs") or {}).items():
            if not inp or not isinstance(inp, dict) or "run_id" not in inp:
                continue
            node["inputs"][kw] = {k: inp.get(k) for k in ("run_id", "step", "entity", "digest")}
            try:
                todo.append(st.get_run(inp["run_id"], step=inp["step"]))
            except (KeyError, ValueError):
                runs.setdefault(inp["run_id"], {"step": inp.get("step"), "status": "missing from store", "inputs": {}})
        if r.step == "data_load":
            node["source"] = r.manifest.get("source") or {"uri": r.manifest.get("params", {}).get("source")}
        runs[r.run_id] = node
    return {"root": rec.run_id, "runs": runs}


def _lineage_tree(dag: dict[str, Any]) -> Tree:
    """The DAG as a tree whose repeated runs are printed once; later mentions say "(shown above)"."""
    shown: set[str] = set()

    def label(run_id: str) -> str:
        n = dag["runs"][run_id]
        text = f"[bold]{n['step']}[/] {run_id} ({n['status']})"
        src = n.get("source") or {}
        if src.get("uri"):
            text += f" source={src['uri']}" + (f" sha256:{str(src['digest'])[:12]}" if src.get("digest") else "")
        return text

    def add(branch: Tree, run_id: str) -> None:
        shown.add(run_id)
        for kw, inp in dag["runs"][run_id]["inputs"].items():
            child = inp["run_id"]
            if child in shown:
                branch.add(f"{kw} <- {dag['runs'][child]['step']} {child} [dim](shown above)[/]")
            else:
                add(branch.add(f"{kw} <- {label(child)}"), child)

    root = Tree(f"lineage: {label(dag['root'])}")
    add(root, dag["root"])
    return root


@app.command()
def show(
    run_id: str = typer.Argument(..., help="Run id (see `cvpipe runs`)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    store: Optional[str] = StoreOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and lineage as JSON."),
) -> None:
    """Show a run's manifest and its lineage (a DAG, each run once) back to the raw data."""
    st = open_store(pick_config(None, config), overrides, allow_plugin, store)
    try:
        rec = st.get_run(run_id)
    except (KeyError, ValueError) as e:
        fail(str(e.args[0]) if e.args else f"no run {run_id!r}")
    dag = lineage(st, rec)
    if as_json:
        out.print_json(json.dumps({"manifest": rec.manifest, "status": rec.status, "lineage": dag}, default=str))
        return
    out.print(_manifest_table(rec))
    out.print(_lineage_tree(dag))


def _manifest_table(rec: RunRecord) -> Table:
    m = rec.manifest
    table = Table(title=f"{rec.step} run {rec.run_id}", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k in ("status", "started_at", "ended_at", "duration_s", "host", "cache_key"):
        table.add_row(k, str(rec.status if k == "status" else m.get(k)))
    table.add_row("code", json.dumps(m.get("code")))
    table.add_row("params", json.dumps(m.get("params")))
    if m.get("source"):
        table.add_row("source", json.dumps(m.get("source"))[:300])
    for name, o in (m.get("outputs") or {}).items():
        table.add_row(f"output {name}",
                      f"{o['uri']}  ({o['files']} files, {o['bytes']} bytes, sha256 {o['digest'][:12]})")
    table.add_row("summary", json.dumps(m.get("summary")))
    if m.get("error"):
        table.add_row("error", f"[red]{m['error']['type']}: {m['error']['message']}[/]")
    if m.get("log"):
        table.add_row("log", m["log"])
    return table


try:  # registered here so that `cvpipe --help` lists them; the serving module imports heavy deps lazily
    from cvpipe.cli.serving import predict, serve

    app.command(help=serve.__doc__)(serve)
    app.command(help=predict.__doc__)(predict)
except ImportError as _e:  # pragma: no cover - only while the serving extra is missing
    _serving_error = _e


# Command groups that live beside their subject; each module defines `register(app)`.
COMMAND_MODULES = ("cvpipe.cli.store_commands", "cvpipe.cli.data_commands", "cvpipe.cli.promotion",
                   "cvpipe.cli.labels", "cvpipe.cli.release")
for _name in COMMAND_MODULES:
    try:
        import importlib

        importlib.import_module(_name).register(app)
    except ModuleNotFoundError as _e:
        if _e.name != _name:
            raise


def main() -> None:
    app()


if __name__ == "__main__":
    main()
