"""The whole pipeline through the real command line, on the main job's data (BCCD blood cells) with a short
config: six steps, each run complete, the packed model better than the model training started from (the whole
interval of the gain above zero), lineage from the service test back to the raw data, and a second run that
reuses every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STEPS = ["data_load", "data_prep", "model_train", "model_pack", "model_eval", "model_test"]


def cvpipe(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("CVPIPE_FAULT", None)
    return subprocess.run([sys.executable, "-m", "cvpipe.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    base = yaml.safe_load((REPO / "configs" / "example.yaml").read_text())
    base["store"] = str(tmp_path_factory.mktemp("e2e") / "store")
    # 3 epochs on plain images (they learn fastest); val only at the start and the end
    base["model_train"].update(epochs=3, no_aug_epochs=3, img_size=320, eval_interval=3)
    base["model_test"] = {"duration_s": 2, "concurrency": 2, "warmup_requests": 1}
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 3 real epochs on 205 images: about 2 minutes idle, several on a shared machine
def test_whole_pipeline_then_cached_rerun(tiny_config):
    first = cvpipe("run", str(tiny_config))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    assert "serve the model: cvpipe serve" in first.stderr
    runs = json.loads(cvpipe("runs", "-c", str(tiny_config), "--json").stdout)
    by_step = {r["step"]: r for r in runs}
    assert [r["step"] for r in runs] == STEPS and all(r["status"] == "complete" for r in runs)
    gain = by_step["model_eval"]["summary"]["gain"]  # the packed model vs its start, on the 72 test images
    assert gain["over"]["kind"] == "start" and gain["images"] == 72, gain
    assert gain["start_AP"] < 0.1 and gain["ci"][0] > 0 and gain["AP"] > 0.15, gain  # COCO weights knew no cells
    assert "what fine-tuning gained: fine-tuning gained +" in " ".join(first.stderr.split())
    shown = json.loads(cvpipe("show", by_step["model_test"]["run_id"], "-c", str(tiny_config), "--json").stdout)
    dag, chain = shown["lineage"], []
    node = dag["runs"][dag["root"]]
    while node["inputs"]:  # model_test's first input back to the raw data
        chain.append(node["step"])
        node = dag["runs"][next(iter(node["inputs"].values()))["run_id"]]
    assert chain + [node["step"]] == ["model_test", "model_pack", "model_train", "data_prep", "data_load"]
    assert node["source"]["digest"]  # what data_load read, by content
    promotions = json.loads(cvpipe("promotions", "-c", str(tiny_config), "--json").stdout)
    assert promotions["champion"] == by_step["model_pack"]["run_id"]  # passed its evaluation: promoted, served
    assert [e["action"] for e in promotions["events"]] == ["promote"]
    second = cvpipe("run", str(tiny_config))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("reusing run") == len(STEPS)
    assert len(json.loads(cvpipe("runs", "-c", str(tiny_config), "--json").stdout)) == len(STEPS)
