"""kill -9 during model_train: the rerun resumes from the last epoch's state and ends with the same weights
as an uninterrupted run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cvpipe.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]


def cvpipe(cfg: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CVPIPE_FAULT"}
    if fault:
        env["CVPIPE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "cvpipe.cli.main", *args, str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_resumes_after_kill(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    train = {"scale": "nano", "pretrained": "none", "img_size": 64, "epochs": 3, "batch_size": 8,
             "no_aug_epochs": 1, "workers": 0, "cache_images": True}
    cfg.write_text(yaml.safe_dump({"store": str(tmp_path / "store"), "env": "t", "pipeline": "p",
                                   "data_load": {"source": "examples/coco_sample"}, "data_prep": {},
                                   "model_train": train}))
    prep = cvpipe(cfg, "run", "--to", "data_prep")
    assert prep.returncode == 0, prep.stderr[-2000:]
    died = cvpipe(cfg, "step", "model_train", fault="model_train:state_saved")
    assert died.returncode == -9
    resumed = cvpipe(cfg, "step", "model_train")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the state of interrupted run" in resumed.stderr
    store = ArtifactStore(str(tmp_path / "store"), env="t", pipeline="p")
    run = store.latest_run("model_train")
    assert run.manifest["summary"]["resumed"] is True and run.manifest["resumed_from"]
    fresh = cvpipe(cfg, "step", "model_train", "--force")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    uninterrupted = store.latest_run("model_train")
    a = torch.load(store.materialize(run, "checkpoints") / "last.pt", weights_only=True)["model"]
    b = torch.load(store.materialize(uninterrupted, "checkpoints") / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
