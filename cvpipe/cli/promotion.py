"""`cvpipe promote`, `cvpipe rollback`, `cvpipe promotions`: which packed model is the champion (served).

The log itself lives in cvpipe.store.promotion; these commands only parse arguments and print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cvpipe.cli.common import AllowPluginOpt, ConfigOpt, SetOpt, StoreOpt, fail, open_store, out, pick_config

ReasonOpt = typer.Option("", "--reason", "-r", help="Why (recorded with the event).")


def _store(config: Optional[Path], overrides, allow_plugins, store):
    return open_store(pick_config(None, config), overrides, allow_plugins, store)


def promote(
    run_id: str = typer.Argument(..., help="model_pack run id to make the champion (see `cvpipe runs`)."),
    reason: str = ReasonOpt,
    force: bool = typer.Option(False, "--force", help="Promote although its evaluation did not pass "
                                                      "(needs --reason)."),
    accept_risk: bool = typer.Option(False, "--accept-risk", help="Let services swap to it although it "
                                     "disagrees with the live model on the live model's test image (recorded)."),
    config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
    allow_plugins: Optional[list[str]] = AllowPluginOpt, store: Optional[str] = StoreOpt,
) -> None:
    """Make a model_pack run the champion: the model `cvpipe serve` and following services serve.
    Refused when its model_eval did not pass its gate, unless --force --reason."""
    from cvpipe.store.promotion import PromotionError
    from cvpipe.store.promotion import promote as do_promote

    st = _store(config, overrides, allow_plugins, store)
    try:
        event = do_promote(st, run_id, reason, force, accept_risk)
    except (PromotionError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    out.print(f"champion: [bold]{event.champion}[/] (was {event.data['previous'] or 'none'}); event {event.seq}")


def rollback(
    to_run_id: Optional[str] = typer.Argument(None, help="Earlier champion to return to (default: the one "
                                                         "before the current)."),
    reason: str = ReasonOpt,
    config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
    allow_plugins: Optional[list[str]] = AllowPluginOpt, store: Optional[str] = StoreOpt,
) -> None:
    """Make an earlier champion the champion again; following services swap back without interruption."""
    from cvpipe.store.promotion import PromotionError
    from cvpipe.store.promotion import rollback as do_rollback

    st = _store(config, overrides, allow_plugins, store)
    try:
        event = do_rollback(st, to_run_id, reason)
    except (PromotionError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    out.print(f"champion: [bold]{event.champion}[/] (was {event.data['previous']}); event {event.seq}")


def promotions(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of events."),
    config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
    allow_plugins: Optional[list[str]] = AllowPluginOpt, store: Optional[str] = StoreOpt,
) -> None:
    """The promotion history, oldest first, and the current champion."""
    from rich.table import Table

    from cvpipe.store.promotion import history_rows, servable_run

    st = _store(config, overrides, allow_plugins, store)
    rows = history_rows(st)
    champion = servable_run(st)
    if as_json:
        out.print_json(json.dumps({"champion": champion.run_id if champion else None, "events": rows},
                                  default=str))
        return
    table = Table(title=f"promotions in {st.uri(st.pipeline_path)}", title_justify="left")
    for col in ("#", "at", "action", "model run", "champion after", "by", "reason", "AP"):
        table.add_column(col, overflow="fold")
    for r in rows:
        ap = (r["metrics"] or {}).get("AP")
        action = r["action"] + ("" if r["counts"] else " (step run not complete: ignored)") + \
            (" [red](forced)[/]" if r["forced"] else "")
        table.add_row(str(r["seq"]), str(r["at"] or "")[:19].replace("T", " "), action, r["run_id"] or "",
                      r["champion"] or "none", r["by"] or "", (r["reason"] or "")[:80],
                      f"{ap:.4f}" if isinstance(ap, (int, float)) else "")
    out.print(table)
    out.print(f"champion (served by default): [bold]{champion.run_id if champion else 'none'}[/]")


def register(app: typer.Typer) -> None:
    for command in (promote, rollback, promotions):
        app.command(help=command.__doc__)(command)
