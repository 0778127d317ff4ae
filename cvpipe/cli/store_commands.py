"""`cvpipe verify`: check that what the store holds is what its manifests promise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cvpipe.store import ArtifactStore, RunRecord
from cvpipe.store.store import IntegrityError


def _open_store(config: Path, store: Optional[str]) -> ArtifactStore:
    from cvpipe.config import ConfigError, load_config

    try:
        cfg = load_config(config, [f"store={store}"] if store else [])
    except ConfigError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    return ArtifactStore.from_config(cfg)


def _runs(st: ArtifactStore, run_id: Optional[str]) -> list[RunRecord]:
    if run_id is None:
        return st.list_runs()
    try:
        return [st.get_run(run_id)]
    except (KeyError, ValueError) as e:  # InvalidRunId is both; IntegrityError a ValueError
        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        raise typer.Exit(1) from None


def verify(
    run_id: Optional[str] = typer.Argument(None, help="Run to check (default: every run in the store)."),
    config: Path = typer.Option(Path("configs/example.yaml"), "--config", "-c",
                                help="Config naming the store, env and pipeline."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL (overrides the config's)."),
) -> None:
    """Check stored runs against their manifests: every output file's sha256 against the run's index, and the
    index against the manifest's digest. Prints a table; exits 1 on any mismatch."""
    st = _open_store(config, store)
    records = _runs(st, run_id)
    table = Table(title=f"verify {st.uri(st.pipeline_path)}", title_justify="left")
    for col in ("run_id", "step", "status", "outputs", "result"):
        table.add_column(col, overflow="fold")
    bad = 0
    for rec in records:
        try:
            problems = st.verify_run(rec)
        except IntegrityError as e:
            problems = [{"entity": "-", "problem": str(e)}]
        bad += bool(problems)
        result = "[green]ok[/]" if not problems else "[red]" + "\n".join(p["problem"] for p in problems) + "[/]"
        table.add_row(rec.run_id, rec.step, rec.status, str(len(rec.manifest.get("outputs") or {})), result)
    out = Console()
    out.print(table)
    out.print(f"{len(records)} run(s) checked, {bad} with problems")
    if bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(help=verify.__doc__)(verify)
