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

from cvpipe.data.schema import DetectionData, ImageFiles, TestImage
from cvpipe.pipeline import Folder, Output, Produced, StepContext, step
from cvpipe.training.checkpoints import Checkpoints
from cvpipe.training.params import TrainParams

log = logging.getLogger(__name__)

OUTPUTS = ("checkpoints", "curves", "test_image")
# the checkpoints entity's files (cvpipe.training.checkpoints)
STATE_FILES = ("last.pt", "best.pt", "start.pt", "checkpoints.json")


class ModelTrainParams(TrainParams):
    nproc_per_node: int = Field(1, ge=1, description="training processes on this machine (DDP over GPUs, or gloo "
                                "over CPU processes); >1 launches torchrun")


@step("model_train", params=ModelTrainParams,
      inputs={"dataset": "data_prep.dataset", "images": "data_prep.images"},
      outputs=[Output("checkpoints", Checkpoints, description="best.pt, last.pt, start.pt, checkpoints.json"),
               Output("curves", Folder, description="metrics.csv, curves.png"),
               Output("test_image", TestImage, description="image.<ext>, ground_truth.json, meta.json")])
def model_train(params: ModelTrainParams, ctx: StepContext, *, dataset: DetectionData,
                images: ImageFiles) -> Produced:
    """Train YOLOX on the train split, validating on val (epoch 0 = the pretrained start); writes the checkpoints
    (best.pt, last.pt, start.pt = epoch 0, checkpoints.json), metrics.csv / curves.png and one validation image
    with its ground truth. The summary names the pretrained weights (source, path, sha256) and the
    hyper-parameters used."""
    from cvpipe.evaluation.leakage import trained_on
    from cvpipe.training.run import run_training  # heavy (torch, cv2): imported here so `cvpipe --help` stays fast

    outputs = {name: ctx.workdir(name) for name in OUTPUTS}
    if params.nproc_per_node > 1:
        summary = launch_torchrun(params, ctx, dataset, images, outputs)
    else:
        params = resume_from_state(params, ctx, outputs["checkpoints"])
        summary = run_training(params, dataset, images.directory, outputs,
                               on_saved=lambda: keep_state(ctx, outputs["checkpoints"]))
        if params.resume is not None and ctx.resume is not None:
            summary["resumed"] = True
    summary["trained_on"] = trained_on(dataset)  # model_eval's gate refuses a candidate trained on its test images
    return Produced(summary, checkpoints=Checkpoints.load(outputs["checkpoints"]), curves=Folder(outputs["curves"]),
                    test_image=TestImage(outputs["test_image"]))


def resume_from_state(params: ModelTrainParams, ctx: StepContext, checkpoints: Path) -> ModelTrainParams:
    """When an earlier run with the same inputs, params and code died, carry on from its last epoch."""
    if ctx.resume is None or not (ctx.resume / "last.pt").is_file() or params.resume is not None:
        return params
    for name in STATE_FILES:
        if name != "last.pt" and (ctx.resume / name).is_file():
            shutil.copyfile(ctx.resume / name, checkpoints / name)
    return params.model_copy(update={"resume": str(ctx.resume / "last.pt")})


def keep_state(ctx: StepContext, checkpoints: Path) -> None:
    """After each epoch the checkpoints become the run's resumable state (stored at once)."""
    if ctx.state is None:
        return
    for name in STATE_FILES:
        if (checkpoints / name).is_file():
            shutil.copyfile(checkpoints / name, ctx.state / name)
    ctx.save_state()


def launch_torchrun(params: ModelTrainParams, ctx: StepContext, dataset: DetectionData, images: ImageFiles,
                    outputs: dict[str, Path]) -> dict:
    """Run cvpipe.training.distributed under torchrun on this machine, then move its outputs into ours."""
    dataset_dir = ctx.workdir("torchrun_dataset")  # the processes read the dataset from a folder
    dataset.save(dataset_dir)
    out = Path(ctx.scratch) / "ddp_out"
    out.mkdir(parents=True, exist_ok=True)
    params_file = Path(ctx.scratch) / "train_params.json"
    params_file.write_text(json.dumps(params.model_dump(mode="json", exclude={"nproc_per_node"})))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={params.nproc_per_node}",
           "-m", "cvpipe.training.distributed", "--dataset", str(dataset_dir), "--images", str(images.directory),
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
