"""What every cvpipe command shares: how a config is named (`-c/--config`, `--set`, `--allow-plugin`), how
errors are printed, and how the store is opened. Command modules import these instead of redefining them."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()

DEFAULT_CONFIG = Path("configs/example.yaml")

ConfigOpt = typer.Option(None, "--config", "-c", help="Pipeline config YAML naming the store, env and pipeline "
                                                      f"[default: {DEFAULT_CONFIG}].")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config key, e.g. --set model_train.epochs=5 or "
                                                "--set store=/tmp/other-store (repeatable).")
AllowPluginOpt = typer.Option(None, "--allow-plugin", help="Trust this `plugins:` module of the config and import "
                                                           "it (repeatable; or CVPIPE_ALLOW_PLUGINS=a,b).")
StoreOpt = typer.Option(None, "--store", help="Store URL (overrides the config's).")


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def pick_config(positional: Optional[Path], option: Optional[Path], required: bool = False) -> Path:
    """The config given positionally or with -c (not both, and not two different files)."""
    if positional and option and Path(positional) != Path(option):
        fail(f"two configs given ({positional} and -c {option}); give one", 2)
    chosen = positional or option
    if chosen is None:
        if required:
            fail(f"give a pipeline config, e.g. `cvpipe run {DEFAULT_CONFIG}`", 2)
        chosen = DEFAULT_CONFIG
    return Path(chosen)


def load(config: Path, overrides: Optional[list[str]] = None, allow_plugins: Optional[list[str]] = None,
         store: Optional[str] = None) -> Any:
    """The validated config, or a clear error (exit 2)."""
    from cvpipe.config import ConfigError, allowed_plugins, load_config

    overrides = list(overrides or []) + ([f"store={store}"] if store else [])
    allow = allowed_plugins() | set(allow_plugins or [])
    try:
        return load_config(config, overrides, allow)
    except ConfigError as e:
        fail(str(e), 2)


def open_store(config: Path, overrides: Optional[list[str]] = None, allow_plugins: Optional[list[str]] = None,
               store: Optional[str] = None):
    from cvpipe.store import ArtifactStore

    return ArtifactStore.from_config(load(config, overrides, allow_plugins, store))


def cvpipe_command() -> str:
    """How the user reached this program, so printed commands work as printed (`.venv/bin/cvpipe`, `cvpipe`)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "cvpipe"
    if Path(argv0).name != "cvpipe":
        return "cvpipe"
    on_path = any(Path(p, "cvpipe").resolve() == Path(argv0).resolve()
                  for p in os.environ.get("PATH", "").split(":") if p)
    return "cvpipe" if on_path else shlex.quote(os.path.relpath(argv0) if Path(argv0).is_absolute() else argv0)


def materialized(store: Any, rec: Any, entity: str) -> Path:
    """A run's entity as a local folder, or one clear line when the store does not hold what the run's manifest
    recorded (tampered, torn or unreadable): the run is refused, never used."""
    from cvpipe.store.store import IntegrityError

    try:
        return Path(store.materialize(rec, entity))
    except IntegrityError as e:
        fail(f"refusing {rec.step} run {rec.run_id}: its {entity} does not match what its manifest recorded ({e}); "
             f"`{cvpipe_command()} verify {rec.run_id}` lists every problem")
    except OSError as e:
        fail(f"cannot read {rec.step} run {rec.run_id}'s {entity}: {e}")


def failed_run_note(store: Any, run_id: str, config: Path) -> str:
    """What the store says of a run that just failed: recorded as failed, or no record could be written."""
    try:
        status = store.get_run(run_id).status
    except (KeyError, ValueError, OSError):
        status = None
    if status == "failed":
        return f"the run is recorded as failed: {cvpipe_command()} show {run_id} -c {config}"
    shown = f"it shows as {status}" if status else "the store has no record of it"
    return f"its failure could not be recorded in the store ({shown}); free space or fix the store, then run again"


def brief_summary(summary: dict[str, Any] | None, most: int = 8) -> str:
    """A run's summary for a table cell: its first `most` plain values as `key value`, floats to 4 significant
    digits; nested values are left to `cvpipe show` (a raw JSON dump wrapped into an 80-column cell unreadably)."""
    parts = []
    for key, value in (summary or {}).items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, bool | int) or (isinstance(value, str) and len(value) <= 40):
            parts.append(f"{key} {value}")
        if len(parts) == most:
            break
    return ", ".join(parts)
