"""kill -9 at every point of a run: nothing committed is partial, the run shows as interrupted, the
rerun completes, and a step with saved state resumes from it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvpipe.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]


def cvpipe(*args, fault=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("CVPIPE_FAULT", None)
    if fault:
        env["CVPIPE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "cvpipe.cli.main", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("point", ["start", "before_commit", "mid_commit"])
def test_kill_at_each_point_leaves_nothing_half_committed(toy_config_file, tmp_path, point):
    cfg = toy_config_file()
    assert cvpipe("step", "toy_source", cfg).returncode == 0
    died = cvpipe("step", "toy_double", cfg, fault=f"toy_double:{point}")
    assert died.returncode == -9
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="toy")
    [rec] = store.list_runs("toy_double")
    assert rec.status == "interrupted" and store.latest_run("toy_double") is None
    rerun = cvpipe("step", "toy_double", cfg)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    done = store.latest_run("toy_double")
    assert (store.materialize(done, "doubled") / "part2.txt").read_text() == "[4, 6]"


def test_rerun_resumes_from_saved_state(toy_config_file, tmp_path):
    cfg = toy_config_file(toy_counter={"epochs": 4})
    died = cvpipe("step", "toy_counter", cfg, fault="toy_counter:state_saved")
    assert died.returncode == -9
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="toy")
    killed = store.list_runs("toy_counter")[0]
    rerun = cvpipe("step", "toy_counter", cfg)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    done = store.latest_run("toy_counter")
    assert done.manifest["summary"] == {"resumed_at": 1}
    assert done.manifest["resumed_from"] == killed.run_id
    assert (store.materialize(done, "result") / "result.txt").read_text() == "1->4"
    # a different param is different work: no resume
    other = cvpipe("step", "toy_counter", cfg, "--set", "toy_counter.epochs=5")
    assert other.returncode == 0
    assert store.latest_run("toy_counter").manifest["summary"] == {"resumed_at": 0}
