"""Data versions from the command line: `cvpipe diff` (which images and labels changed between two runs of
data_load or data_prep) and `cvpipe coco` (a version's COCO instances JSON, written from its tables on demand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cvpipe.cli.common import (
    AllowPluginOpt,
    ConfigOpt,
    SetOpt,
    StoreOpt,
    fail,
    materialized,
    open_store,
    out,
    pick_config,
)

CHANGE_STYLE = {"added": "green", "removed": "red", "changed": "yellow", "labels": "cyan"}


def _runs(st: Any, old: Optional[str], new: Optional[str], step: str) -> tuple[Any, Any]:
    """The two runs to compare: as named, else the newest two complete runs of `step` (or `old` and the newest)."""
    try:
        named = [st.get_run(r) for r in (old, new) if r]
    except (KeyError, ValueError) as e:  # InvalidRunId is both, IntegrityError a ValueError
        fail(str(e))
    if len(named) == 2:
        return named[0], named[1]
    done = [r for r in st.list_runs(step) if r.complete and r.run_id not in {n.run_id for n in named}]
    if len(named) + len(done) < 2:
        fail(f"{step} has {len(done)} other complete run(s): name two runs (cvpipe diff OLD NEW) or make another "
             f"data version")
    return (named[0], done[-1]) if named else (done[-2], done[-1])


def _dataset(st: Any, rec: Any) -> Any:
    from cvpipe.data.schema import DetectionData

    if "dataset" not in (rec.manifest.get("outputs") or {}):
        fail(f"run {rec.run_id} ({rec.step}) is not a data version: it has no dataset output")
    return DetectionData.load(materialized(st, rec, "dataset"))


def _table(diff: Any, old: str, new: str, limit: int) -> Table:
    table = Table(title=f"{old} -> {new}", title_justify="left", expand=False)
    table.add_column("change", no_wrap=True)
    table.add_column("image (path in the raw data)", overflow="fold", max_width=60)
    shown = 0
    for change in ("added", "removed", "changed", "labels"):
        for name in getattr(diff, change):
            if shown >= limit:
                break
            table.add_row(f"[{CHANGE_STYLE[change]}]{change}[/]", escape(name))  # a name is data, not markup
            shown += 1
    return table


def diff(
    old: Optional[str] = typer.Argument(None, help="The older run (default: the second newest of --step)."),
    new: Optional[str] = typer.Argument(None, help="The newer run (default: the newest of --step)."),
    step: str = typer.Option("data_load", "--step", help="Whose runs to compare when they are not named."),
    as_json: bool = typer.Option(False, "--json", help="Print every change as JSON (no row limit)."),
    limit: int = typer.Option(40, "--limit", min=0, help="Most rows in the table."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Images added, removed, changed (other bytes) and relabelled between two data versions."""
    from cvpipe.data.diff import diff_datasets

    st = open_store(pick_config(None, config), overrides, allow_plugin, store)
    a, b = _runs(st, old, new, step)
    result = diff_datasets(_dataset(st, a), _dataset(st, b))
    if as_json:
        out.print_json(json.dumps({"old": a.run_id, "new": b.run_id, **result.as_json()}))
        return
    out.print(_table(result, a.run_id, b.run_id, limit))
    total = sum(len(getattr(result, c)) for c in CHANGE_STYLE)
    out.print(f"{len(result.added)} added, {len(result.removed)} removed, {len(result.changed)} changed, "
              f"{len(result.labels)} relabelled; {result.unchanged} of {result.new_images} unchanged"
              + (f" ({total - limit} more rows: --limit or --json)" if total > limit else ""), highlight=False)


def coco(
    run: Optional[str] = typer.Argument(None, help="The data version (default: the newest run of --step)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (train, val or test)."),
    output: Path = typer.Option(Path("coco.json"), "-o", "--output", help="The JSON file to write."),
    step: str = typer.Option("data_prep", "--step", help="Whose newest run to export when no run is named."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    allow_plugin: Optional[list[str]] = AllowPluginOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Write a data version's COCO instances JSON (file_name: the blob name in its images entity)."""
    st = open_store(pick_config(None, config), overrides, allow_plugin, store)
    try:
        rec = st.get_run(run) if run else st.latest_run(step)
    except (KeyError, ValueError) as e:
        fail(str(e))
    if rec is None:
        fail(f"{step} has no complete run: make a data version first (cvpipe run)")
    try:
        written = _dataset(st, rec).write_coco(output, split)
    except ValueError as e:
        fail(str(e))
    out.print(f"wrote {written} (run {rec.run_id}{f', split {split}' if split else ''})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command(help=diff.__doc__)(diff)
    app.command(help=coco.__doc__)(coco)
