"""Progress bars for long loops: rich on a terminal, periodic log lines elsewhere (CI, files)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
log = logging.getLogger("cvpipe.progress")


def track(iterable: Iterable[T], description: str, total: int | None = None, log_every_s: float = 15.0) -> Iterator[T]:
    """Yield from `iterable` with a progress bar (terminal) or a log line every `log_every_s` seconds."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
            yield from bar.track(iterable, total=total, description=description)
        return
    start = last = time.monotonic()
    n = 0
    for n, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= log_every_s:
            last = now
            log.info("%s: %d/%s (%.1f/s)", description, n, total if total is not None else "?", n / (now - start))
