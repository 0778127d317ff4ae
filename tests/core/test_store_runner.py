import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvpipe.pipeline.runner import MissingInput, Runner, StepFailed, select_steps
from cvpipe.store import ArtifactStore, new_run_id
from cvpipe.store.store import STATUS_INTERRUPTED

REPO = Path(__file__).resolve().parents[2]


def test_run_ids_sort_by_time_and_are_unique():
    ids = [new_run_id() for _ in range(200)]
    assert len(set(ids)) == 200
    first = new_run_id()
    time.sleep(0.002)
    assert new_run_id() > first
    assert re.fullmatch(r"\d{8}T\d{9}Z-[0-9a-f]{6}", first)


def test_pipeline_run_writes_layout_manifest_and_lineage(toy_cfg, tmp_path):
    cfg = toy_cfg()
    runner = Runner(cfg)
    src, dbl = runner.run(["toy_source", "toy_double"])
    store = runner.store
    run_dir = tmp_path / "store" / "test" / "toy" / "toy_double" / dbl.run_id
    assert (run_dir / "doubled" / "part2.txt").read_text() == "[4, 6]"
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and m["step"] == "toy_double"
    assert m["inputs"]["numbers"]["run_id"] == src.run_id
    assert m["inputs"]["numbers"]["digest"] == src.manifest["outputs"]["numbers"]["digest"]
    assert m["outputs"]["doubled"]["files"] == 3 and len(m["outputs"]["doubled"]["digest"]) == 64
    assert m["code"]["package_version"] and m["code"]["fingerprint"]
    assert m["summary"] == {"total": 12} and m["params"]["factor"] == 2
    assert m["started_at"] <= m["ended_at"] and m["host"]
    assert "running toy_double" in (run_dir / "logs" / "step.log").read_text()
    # content-addressed: 4 files with 2 distinct contents -> 2 objects, shared by later loads too
    objects = list((tmp_path / "store" / "test" / "objects").rglob("*.txt"))
    assert len(objects) == 2
    assert (store.materialize(dbl, "doubled") / "blob_count.txt").read_text() == "4"


def test_cache_reuse_param_change_and_force(toy_cfg, capsys):
    first = Runner(toy_cfg()).run(["toy_source", "toy_double"])
    again = Runner(toy_cfg()).run(["toy_source", "toy_double"])
    assert [r.run_id for r in again] == [r.run_id for r in first]
    changed = Runner(toy_cfg(overrides=["toy_double.factor=3"])).run(["toy_source", "toy_double"])
    assert changed[0].run_id == first[0].run_id and changed[1].run_id != first[1].run_id
    forced = Runner(toy_cfg(), force=True).run(["toy_source"])
    assert forced[0].run_id != first[0].run_id
    store = ArtifactStore.from_config(toy_cfg())
    assert len(store.list_runs("toy_source")) == 2 and len(store.list_runs("toy_double")) == 2


def test_latest_and_pinned_resolution(toy_cfg):
    old = Runner(toy_cfg(overrides=["toy_source.n=2"])).run(["toy_source"])[0]
    new = Runner(toy_cfg(overrides=["toy_source.n=6"])).run(["toy_source"])[0]
    latest = Runner(toy_cfg()).run_step("toy_double")
    assert latest.manifest["inputs"]["numbers"]["run_id"] == new.run_id
    pinned = Runner(toy_cfg(overrides=[f"pins.toy_source={old.run_id}"])).run_step("toy_double")
    assert pinned.manifest["inputs"]["numbers"]["run_id"] == old.run_id
    assert pinned.manifest["summary"] == {"total": 2}
    with pytest.raises(KeyError, match="no run"):
        Runner(toy_cfg(overrides=["pins.toy_source=20990101T000000000Z-abcdef"])).run_step("toy_double")


def test_missing_input_is_a_clear_error(toy_cfg):
    with pytest.raises(MissingInput, match=r"no complete run of toy_source.*cvpipe step toy_source"):
        Runner(toy_cfg()).run_step("toy_double")


def test_optional_self_input_sees_previous_run(toy_cfg):
    r1 = Runner(toy_cfg()).run(["toy_source", "toy_double", "toy_compare"])[-1]
    assert r1.manifest["summary"] == {"had_previous": False}
    r2 = Runner(toy_cfg(), force=True).run_step("toy_compare")
    assert r2.manifest["summary"] == {"had_previous": True}
    assert r2.manifest["inputs"]["previous"]["run_id"] == r1.run_id


def test_optional_input_from_a_run_made_before_the_entity_existed_is_none(toy_cfg, tmp_path):
    """An optional input whose producing run has no such output (made by an older version of the step, e.g. a
    model_pack run from before its `start` output) is passed as None, not an error."""
    r1 = Runner(toy_cfg()).run(["toy_source", "toy_double", "toy_compare"])[-1]
    manifest = next((tmp_path / "store").glob(f"*/*/toy_compare/{r1.run_id}/manifest.json"))
    manifest.write_text(json.dumps(dict(r1.manifest, outputs={})))  # as an older version of the step wrote it
    r2 = Runner(toy_cfg(), force=True).run_step("toy_compare")
    assert r2.manifest["summary"] == {"had_previous": False} and r2.manifest["inputs"]["previous"] is None


def test_failure_is_recorded_and_nothing_committed_is_touched(toy_cfg):
    good = Runner(toy_cfg()).run(["toy_source", "toy_double"])[1]
    before = json.dumps(good.manifest)
    with pytest.raises(StepFailed, match="injected failure"):
        Runner(toy_cfg(overrides=["toy_double.fail=true"])).run_step("toy_double")
    store = ArtifactStore.from_config(toy_cfg())
    failed = [r for r in store.list_runs("toy_double") if r.status == "failed"]
    assert len(failed) == 1 and failed[0].manifest["error"]["message"] == "injected failure"
    # what the failed step wrote is kept for diagnosis, but never used as an input
    kept = failed[0].manifest["outputs"]["doubled"]
    assert kept["files"] == 1 and (store.materialize(failed[0], "doubled") / "part1.txt").read_text() == "[0, 2]"
    assert store.latest_run("toy_double").run_id == good.run_id
    assert json.dumps(store.get_run(good.run_id).manifest) == before


def test_committed_runs_are_immutable(toy_cfg):
    rec = Runner(toy_cfg()).run(["toy_source"])[0]
    store = ArtifactStore.from_config(toy_cfg())
    with pytest.raises(RuntimeError, match="immutable"):
        store.write_manifest({**rec.manifest, "summary": {"n": 999}})


def test_crash_during_commit_leaves_no_complete_run(toy_cfg, monkeypatch):
    Runner(toy_cfg()).run(["toy_source"])
    store = ArtifactStore.from_config(toy_cfg())
    calls = {"n": 0}
    real = ArtifactStore._put_file

    def flaky(self, local, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk went away")
        return real(self, local, path)

    monkeypatch.setattr(ArtifactStore, "_put_file", flaky)
    with pytest.raises(StepFailed, match="disk went away"):
        Runner(toy_cfg()).run_step("toy_double")
    monkeypatch.undo()
    assert store.latest_run("toy_double") is None
    # the rerun completes
    assert Runner(toy_cfg()).run_step("toy_double").complete


def _default_sigint() -> None:
    # an ignored or blocked SIGINT survives exec: once in the full suite the step slept through it (status
    # "complete"), so the child starts with Ctrl-C's default action whatever the test worker inherited
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _spawn(config: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvpipe.cli.main", "step", "toy_double", str(config)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_sigint)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_mid_step_then_rerun(toy_config_file, tmp_path, sig):
    cfg_file = toy_config_file(toy_double={"hang_after_partial": True})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "TOY_SIGNAL_FILE": str(tmp_path / "sig")}
    first = subprocess.run([sys.executable, "-m", "cvpipe.cli.main", "step", "toy_source", str(cfg_file)],
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    proc = _spawn(cfg_file, env)
    deadline = time.time() + 60
    while not (tmp_path / "sig").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    run_id = (tmp_path / "sig").read_text()
    proc.send_signal(sig)
    proc.wait(timeout=120)  # a loaded 2-core machine can take long to unwind; hangs still fail
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="toy")
    rec = store.get_run(run_id)
    assert rec.status == (STATUS_INTERRUPTED if sig == signal.SIGKILL else "failed")
    if sig == signal.SIGINT:
        assert proc.returncode == 130
    assert store.latest_run("toy_double") is None
    cfg_file.write_text(cfg_file.read_text().replace("hang_after_partial: true", "hang_after_partial: false"))
    rerun = subprocess.run([sys.executable, "-m", "cvpipe.cli.main", "step", "toy_double", str(cfg_file)],
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert store.latest_run("toy_double").manifest["summary"] == {"total": 12}


def test_concurrent_runs_of_the_same_step(toy_config_file, tmp_path):
    cfg_file = toy_config_file()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "cvpipe.cli.main", "step", "toy_source", str(cfg_file), "--force"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="toy")
    runs = store.list_runs("toy_source")
    assert len(runs) == 3 and all(r.complete for r in runs)
    digests = {r.manifest["outputs"]["numbers"]["digest"] for r in runs}
    assert len(digests) == 1
    for r in runs:
        assert (store.materialize(r, "numbers") / "numbers.txt").read_text() == "0\n1\n2\n3"


def test_select_steps_orders_by_dependency():
    assert select_steps(["toy_double", "toy_source", "toy_compare"]) == ["toy_source", "toy_double", "toy_compare"]
    three = ["toy_source", "toy_double", "toy_compare"]
    assert select_steps(three, start="toy_double") == ["toy_double", "toy_compare"]
    assert select_steps(["toy_source", "toy_double", "toy_compare"], end="toy_double") == ["toy_source", "toy_double"]
    assert select_steps(["toy_source", "toy_double"], steps=["toy_double"]) == ["toy_double"]
    with pytest.raises(ValueError, match="not in this pipeline"):
        select_steps(["toy_source"], steps=["toy_compare"])
