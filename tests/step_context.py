"""The one StepContext factory of the tests: a context as the runner makes one, with an empty folder for each
output the step declares and a scratch folder, all under `root`; and `run_step`, which calls a step on it as
the runner does (input entities loaded from folders, returned entities saved into ctx.outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvpipe.pipeline import StepContext
from cvpipe.pipeline.runner import invoke
from cvpipe.pipeline.step import get_step


def step_context(root: Path, step: str, run_id: str = "test", **fields) -> StepContext:
    outputs = {name: root / name for name in get_step(step).outputs}
    for folder in [*outputs.values(), root / "scratch"]:
        folder.mkdir(parents=True, exist_ok=True)
    return StepContext(step=step, run_id=run_id, outputs=outputs, scratch=root / "scratch", **fields)


def run_step(ctx: StepContext, params: Any = None, **inputs: Path | None) -> dict:
    """Call the step of `ctx` with input folders by keyword (missing optional inputs: None); its summary.
    Resolvers (model_eval's reference) run without a store, as for a step called by hand."""
    spec = get_step(ctx.step)
    params = spec.params() if params is None else params
    local = {kw: (Path(inputs[kw]) if inputs.get(kw) is not None else None) for kw in spec.inputs}
    runs = {kw: ctx.input_runs.get(kw) for kw in spec.inputs}
    extra = {kw: resolver(params, None, runs).load() for kw, resolver in spec.resolve.items()}
    return invoke(spec, params, ctx, local, extra)
