"""`cvpipe`: run the pipeline, inspect runs, serve and use models."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.tree import Tree

from cvpipe.config import ConfigError, load_config
from cvpipe.pipeline.runner import MissingInput, Runner, StepFailed, select_steps
from cvpipe.pipeline.step import registry
from cvpipe.store import ArtifactStore, RunRecord

app = typer.Typer(
    help="cvpipe: a detection model's whole life as a versioned pipeline: data_load -> data_prep -> "
         "model_train -> model_pack -> model_eval / model_test, then a served model.",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)
console = Console(stderr=True)
out = Console()

DEFAULT_CONFIG = Path("configs/example.yaml")
ConfigArg = typer.Argument(..., help="Pipeline config YAML (e.g. configs/example.yaml).", exists=False)
SetOpt = typer.Option(None, "--set", "-s", help="Override a config key, e.g. --set model_train.epochs=5 or "
                                                "--set store=/tmp/other-store (repeatable).")
ForceOpt = typer.Option(False, "--force", "-f", help="Rerun even when a run with the same inputs, params and "
                                                     "code exists.")


def setup_logging(verbose: bool = False) -> None:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "urllib3", "botocore", "s3fs", "aiobotocore", "fsspec", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _load(config: Path, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as e:
        fail(str(e), 2)


def _store(config: Path, store: str | None) -> ArtifactStore:
    cfg = _load(config, [f"store={store}"] if store else [])
    return ArtifactStore.from_config(cfg)


def _execute(cfg: Any, names: list[str], force: bool, config: Path | None = None) -> None:
    runner = Runner(cfg, force=force, console=console)
    try:
        runs = runner.run(names)
    except StepFailed as e:
        fail(f"{e}\n  the run is recorded as failed: cvpipe show {e.run_id}")
    except MissingInput as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; the current run is recorded as failed, committed runs are untouched", 130)
    table = Table(title="pipeline runs", title_justify="left")
    for col in ("step", "run_id", "summary"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(r.step, r.run_id, json.dumps(r.manifest.get("summary", {}))[:200])
    console.print(table)
    for r in runs:
        report = (r.manifest.get("outputs") or {}).get("report")
        if report:
            console.print(f"[bold]{r.step} report:[/] {report['uri']}/report.html")
    packed = [r for r in runs if r.step == "model_pack"]
    if packed:
        where = f" -c {config}" if config else ""
        console.print(f"[bold green]serve the model:[/] cvpipe serve {packed[-1].run_id}{where}   "
                      f"(then open http://127.0.0.1:3000)")


@app.command()
def run(
    config: Path = ConfigArg,
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated subset of steps to run."),
    start: Optional[str] = typer.Option(None, "--from", help="Run from this step on."),
    end: Optional[str] = typer.Option(None, "--to", help="Run up to and including this step."),
    force: bool = ForceOpt,
    overrides: Optional[List[str]] = SetOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the pipeline: every step that has a section in CONFIG, in dependency order.

    Each step reads the latest complete (or pinned) runs of the steps it depends on, and reuses an
    existing run when its inputs, params and code are unchanged.
    """
    setup_logging(verbose)
    cfg = _load(config, overrides)
    try:
        names = select_steps(cfg.step_names(), [s.strip() for s in steps.split(",")] if steps else None, start, end)
    except ValueError as e:
        fail(str(e), 2)
    if not names:
        fail(f"{config} has no step sections; known steps: {', '.join(registry())}", 2)
    _execute(cfg, names, force, config)


@app.command()
def step(
    name: str = typer.Argument(..., help="Step to run, e.g. data_prep."),
    config: Path = ConfigArg,
    force: bool = ForceOpt,
    overrides: Optional[List[str]] = SetOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run one step; its inputs come from the latest complete (or pinned) runs in the store."""
    setup_logging(verbose)
    cfg = _load(config, overrides)
    if name not in registry():
        fail(f"unknown step {name!r}; known steps: {', '.join(registry())}", 2)
    _execute(cfg, [name], force, config)


@app.command()
def steps() -> None:
    """List the registered steps with their inputs and outputs."""
    table = Table(title="steps", title_justify="left")
    for col in ("step", "inputs", "outputs", "description"):
        table.add_column(col, overflow="fold")
    for name, spec in registry().items():
        ins = ", ".join(f"{k}<-{i.step}.{i.entity}{'?' if i.optional else ''}" for k, i in spec.inputs.items())
        outs = ", ".join(o + (" (content-addressed)" if v.content_addressed else "") for o, v in spec.outputs.items())
        table.add_row(name, ins, outs, spec.description)
    out.print(table)


def _run_row(r: RunRecord) -> dict[str, Any]:
    m = r.manifest
    return {"run_id": r.run_id, "step": r.step, "status": r.status, "started_at": m.get("started_at"),
            "duration_s": m.get("duration_s"), "summary": m.get("summary", {}),
            "error": (m.get("error") or {}).get("message")}


@app.command()
def runs(
    step: Optional[str] = typer.Option(None, "--step", help="Only runs of this step."),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Config naming the store, env and pipeline."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL (overrides the config's)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (run_id, step, status, ...)."),
) -> None:
    """List the runs in the store, oldest first."""
    st = _store(config, store)
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
        table.add_row(*cells, *([r["error"] or json.dumps(r["summary"])] if wide else []))
    out.print(table)


def lineage(st: ArtifactStore, rec: RunRecord) -> dict[str, Any]:
    """The run and, recursively, the runs its inputs came from (back to raw data)."""
    node: dict[str, Any] = {"run_id": rec.run_id, "step": rec.step, "status": rec.status, "inputs": {}}
    for kw, inp in (rec.manifest.get("inputs") or {}).items():
        if not inp:
            continue
        try:
            parent = st.get_run(inp["run_id"], step=inp["step"])
            node["inputs"][kw] = {"entity": inp["entity"], "digest": inp["digest"], **lineage(st, parent)}
        except KeyError:
            node["inputs"][kw] = {**inp, "status": "missing from store"}
    if rec.step == "data_load":
        node["source"] = rec.manifest.get("params", {}).get("source")
    return node


@app.command()
def show(
    run_id: str = typer.Argument(..., help="Run id (see `cvpipe runs`)."),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Config naming the store, env and pipeline."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL (overrides the config's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and lineage as JSON."),
) -> None:
    """Show a run's manifest and its lineage back to the raw data."""
    st = _store(config, store)
    try:
        rec = st.get_run(run_id)
    except KeyError as e:
        fail(str(e.args[0]))
    tree = lineage(st, rec)
    if as_json:
        out.print_json(json.dumps({"manifest": rec.manifest, "status": rec.status, "lineage": tree}, default=str))
        return
    m = rec.manifest
    table = Table(title=f"{rec.step} run {rec.run_id}", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k in ("status", "started_at", "ended_at", "duration_s", "host", "cache_key"):
        table.add_row(k, str(rec.status if k == "status" else m.get(k)))
    table.add_row("code", json.dumps(m.get("code")))
    table.add_row("params", json.dumps(m.get("params")))
    for name, o in (m.get("outputs") or {}).items():
        table.add_row(f"output {name}", f"{o['uri']}  ({o['files']} files, {o['bytes']} bytes, sha256 {o['digest'][:12]})")
    table.add_row("summary", json.dumps(m.get("summary")))
    if m.get("error"):
        table.add_row("error", f"[red]{m['error']['type']}: {m['error']['message']}[/]")
    if m.get("log"):
        table.add_row("log", m["log"])
    out.print(table)

    def add(branch: Tree, node: dict) -> None:
        for kw, child in node["inputs"].items():
            sub = branch.add(f"{kw} <- [bold]{child['step']}[/] {child['run_id']} ({child.get('status')})"
                             + (f" source={child['source']}" if child.get("source") else ""))
            add(sub, child)

    root = Tree(f"lineage: [bold]{rec.step}[/] {rec.run_id}")
    add(root, tree)
    out.print(root)


try:  # registered here so that `cvpipe --help` lists them; the serving module imports heavy deps lazily
    from cvpipe.cli.serving import predict, serve

    app.command(help=serve.__doc__)(serve)
    app.command(help=predict.__doc__)(predict)
except ImportError as _e:  # pragma: no cover - only while the serving extra is missing
    _serving_error = _e


# Command groups that live beside their subject; each module defines `register(app)`.
COMMAND_MODULES = ("cvpipe.cli.store_commands", "cvpipe.cli.promotion")
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
