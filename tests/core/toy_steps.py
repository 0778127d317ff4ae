"""Throwaway steps for the core tests (imported as a config plugin, also in subprocesses)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cvpipe.pipeline import Output, StepContext, StepParams, step


class SourceParams(StepParams):
    n: int = 3
    text: str = "hello"


@step("toy_source", params=SourceParams, outputs=["numbers", Output("blobs", content_addressed=True)])
def toy_source(params: SourceParams, ctx: StepContext) -> dict:
    """Write n numbers and one blob per number."""
    (ctx.output("numbers") / "numbers.txt").write_text("\n".join(str(i) for i in range(params.n)))
    for i in range(params.n):
        (ctx.output("blobs") / f"b{i}.txt").write_text(f"{params.text}-{i % 2}")
    return {"n": params.n}


class DoubleParams(StepParams):
    factor: int = 2
    fail: bool = False
    hang_after_partial: bool = False


@step("toy_double", params=DoubleParams, inputs={"numbers": "toy_source.numbers", "blobs": "toy_source.blobs"},
      outputs=["doubled"])
def toy_double(params: DoubleParams, ctx: StepContext, *, numbers: Path, blobs: Path) -> dict:
    """Multiply the numbers; optionally fail or hang half-way (crash tests)."""
    values = [int(x) * params.factor for x in (numbers / "numbers.txt").read_text().split()]
    out = ctx.output("doubled")
    (out / "part1.txt").write_text(str(values[: len(values) // 2]))
    if params.fail:
        raise ValueError("injected failure")
    if params.hang_after_partial:
        signal_file = Path(os.environ["TOY_SIGNAL_FILE"])
        # written whole, then renamed: the test polls for the file, and a half-written one read "" as the run id
        signal_file.with_suffix(".tmp").write_text(ctx.run_id)
        signal_file.with_suffix(".tmp").replace(signal_file)
        time.sleep(120)
    (out / "part2.txt").write_text(str(values[len(values) // 2:]))
    (out / "blob_count.txt").write_text(str(len(list(blobs.iterdir()))))
    return {"total": sum(values)}


class CompareParams(StepParams):
    pass


@step("toy_compare", params=CompareParams, inputs={"doubled": "toy_double.doubled", "previous": "toy_compare.seen?"},
      outputs=["seen"])
def toy_compare(params: CompareParams, ctx: StepContext, *, doubled: Path, previous: Path | None) -> dict:
    """Record whether a previous run of itself existed."""
    (ctx.output("seen") / "seen.txt").write_text((doubled / "part2.txt").read_text())
    return {"had_previous": previous is not None}


class CounterParams(StepParams):
    epochs: int = 3


@step("toy_counter", params=CounterParams, outputs=["result"])
def toy_counter(params: CounterParams, ctx: StepContext) -> dict:
    """Count epochs, saving resumable state after each (resume tests)."""
    start = int((ctx.resume / "epoch.txt").read_text()) if ctx.resume and (ctx.resume / "epoch.txt").exists() else 0
    for epoch in range(start, params.epochs):
        (ctx.state / "epoch.txt").write_text(str(epoch + 1))
        ctx.save_state()
    (ctx.output("result") / "result.txt").write_text(f"{start}->{params.epochs}")
    return {"resumed_at": start}
