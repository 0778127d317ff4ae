"""DDP: two CPU processes (gloo) under torchrun train the tiny model; rank 0 writes the step's outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from step_context import run_step, step_context


def test_torchrun_two_cpu_processes(synthetic, tmp_path):
    ds_dir, images_dir = synthetic
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cvpipe.training.distributed", "--dataset", str(ds_dir), "--images", str(images_dir),
           "--out", str(out),
           "--set", "scale=nano", "--set", "pretrained=none", "--set", "img_size=64", "--set", "batch_size=2",
           "--set", "epochs=2", "--set", "no_aug_epochs=1", "--set", "device=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    # the ranks trained on different images yet hold the same weights: their gradients were averaged
    assert summary["rank_weight_spread"] == 0.0, summary["rank_weight_spread"]
    for f in ("checkpoints/last.pt", "checkpoints/best.pt", "curves/metrics.csv", "curves/curves.png",
              "test_image/ground_truth.json"):
        assert (out / f).is_file(), f
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped
    assert ckpt["extra"]["epoch"] == 2


def test_step_launches_torchrun_and_collects_its_outputs(synthetic, tmp_path, monkeypatch):
    """`nproc_per_node: 2` makes the step start torchrun with its params file and move OUT_DIR into its outputs.
    The launched command runs here in one process (DDP itself, two real ranks, is the test above): one torchrun
    start per suite is enough, and the command line and the collected outputs are what the step adds."""
    import cvpipe.steps.model_train as step_module
    from cvpipe.steps.model_train import ModelTrainParams
    from cvpipe.training.distributed import main as distributed_main

    launched: list[list[str]] = []
    real_run = subprocess.run

    def run_in_process(cmd, *args, **kwargs):
        if "torch.distributed.run" not in cmd:
            return real_run(cmd, *args, **kwargs)
        launched.append(cmd)
        module_at = cmd.index("cvpipe.training.distributed")
        return subprocess.CompletedProcess(cmd, distributed_main(cmd[module_at + 1:]))

    monkeypatch.setattr(step_module.subprocess, "run", run_in_process)
    ds_dir, images_dir = synthetic
    ctx = step_context(tmp_path, "model_train", run_id="t")
    params = ModelTrainParams(scale="nano", pretrained="none", img_size=64, batch_size=2, epochs=1, no_aug_epochs=0,
                              device="cpu", nproc_per_node=2)
    summary = run_step(ctx, params, dataset=ds_dir, images=images_dir)
    [cmd] = launched
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], cmd
    sent = json.loads(Path(cmd[cmd.index("--params") + 1]).read_text())
    assert "nproc_per_node" not in sent and sent["epochs"] == 1 and sent["img_size"] == 64
    assert summary["epochs"] == 1 and summary["train_images"] == 4
    assert (ctx.output("checkpoints") / "best.pt").is_file() and (ctx.output("test_image") / "meta.json").is_file()
    assert (ctx.output("curves") / "metrics.csv").is_file()
