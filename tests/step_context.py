"""The one StepContext factory of the tests: a context as the runner makes one, with an empty folder for each
output the step declares and a scratch folder, all under `root`."""

from __future__ import annotations

from pathlib import Path

from cvpipe.pipeline import StepContext
from cvpipe.pipeline.step import get_step


def step_context(root: Path, step: str, run_id: str = "test", **fields) -> StepContext:
    outputs = {name: root / name for name in get_step(step).outputs}
    for folder in [*outputs.values(), root / "scratch"]:
        folder.mkdir(parents=True, exist_ok=True)
    return StepContext(step=step, run_id=run_id, outputs=outputs, scratch=root / "scratch", **fields)
