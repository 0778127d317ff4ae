"""model_train: fine-tune (or train) YOLOX on the prepared dataset; checkpoints, curves and a test image."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import Field

from cvpipe.pipeline import StepContext, step
from cvpipe.training.params import TrainParams

log = logging.getLogger(__name__)


class ModelTrainParams(TrainParams):
    nproc_per_node: int = Field(1, ge=1, description="training processes on this machine (DDP over GPUs, or gloo "
                                "over CPU processes); >1 launches torchrun")


@step("model_train", params=ModelTrainParams,
      inputs={"dataset": "data_prep.dataset", "images": "data_prep.images"},
      outputs=["checkpoints", "curves", "test_image"])
def model_train(params: ModelTrainParams, ctx: StepContext, *, dataset: Path, images: Path) -> dict:
    """Train YOLOX on the train split, validating on val; writes last.pt / best.pt, metrics.csv / curves.png and
    one validation image with its ground truth."""
    from cvpipe.training.run import run_training  # heavy (torch, cv2): imported here so `cvpipe --help` stays fast

    outputs = {name: ctx.output(name) for name in ("checkpoints", "curves", "test_image")}
    if params.nproc_per_node > 1:
        return launch_torchrun(params, ctx, dataset, images, outputs)
    checkpoints = outputs["checkpoints"]
    if ctx.resume is not None and (ctx.resume / "last.pt").is_file() and params.resume is None:
        # an earlier run with the same inputs, params and code died: carry on from its last epoch
        if (ctx.resume / "best.pt").is_file():
            shutil.copyfile(ctx.resume / "best.pt", checkpoints / "best.pt")
        params = params.model_copy(update={"resume": str(ctx.resume / "last.pt")})

    def keep_state() -> None:
        """After each epoch the checkpoints become the run's resumable state (stored at once)."""
        if ctx.state is None:
            return
        for name in ("last.pt", "best.pt"):
            if (checkpoints / name).is_file():
                shutil.copyfile(checkpoints / name, ctx.state / name)
        ctx.save_state()

    summary = run_training(params, dataset, images, outputs, on_saved=keep_state)
    if params.resume is not None and ctx.resume is not None:
        summary["resumed"] = True
    return summary


def launch_torchrun(params: ModelTrainParams, ctx: StepContext, dataset: Path, images: Path,
                    outputs: dict[str, Path]) -> dict:
    """Run cvpipe.training.distributed under torchrun on this machine, then move its outputs into ours."""
    out = Path(ctx.scratch) / "ddp_out"
    out.mkdir(parents=True, exist_ok=True)
    params_file = Path(ctx.scratch) / "train_params.json"
    params_file.write_text(json.dumps(params.model_dump(mode="json", exclude={"nproc_per_node"})))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={params.nproc_per_node}",
           "-m", "cvpipe.training.distributed", "--dataset", str(dataset), "--images", str(images),
           "--out", str(out), "--params", str(params_file)]
    log.info("launching %s", " ".join(cmd))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit code {proc.returncode}); see the log above")
    for name, target in outputs.items():
        for f in sorted((out / name).glob("*")):
            f.replace(target / f.name)
    return json.loads((out / "summary.json").read_text())
