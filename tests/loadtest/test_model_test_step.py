"""model_test end to end: a Bento built from a packed YOLOX-Nano, served by a real `bentoml serve`."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from coco_data import need_data
from step_context import run_step, step_context

from cvpipe.pipeline.step import get_step


@pytest.fixture(scope="module")
def bento_inputs(tmp_path_factory):
    from evaluation.helpers import DEV
    from evaluation.packed_model import write_packed_model

    from cvpipe.serving.bento import build_bento

    need_data()
    tmp = tmp_path_factory.mktemp("model_test")
    gt = json.loads((DEV / "annotations.json").read_text())
    model = write_packed_model(tmp / "model", gt, run_id="20260101-000000-abcd")
    build_bento(model, tmp / "bento", version="20260101-000000-abcd")
    return tmp, model, tmp / "bento"


def ctx_for(tmp, name):
    return step_context(tmp / name, "model_test", run_id=name)


def processes_using(bentoml_home) -> list[int]:
    """Pids of processes (the server and its workers) whose environment names this BentoML home."""
    marker = f"BENTOML_HOME={bentoml_home}".encode()
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if marker in open(f"/proc/{p}/environ", "rb").read().split(b"\0"):
                    pids.append(int(p))
            except OSError:
                continue
    return pids


def test_model_test_passes_and_reports(bento_inputs, tmp_path, monkeypatch):
    import cvpipe.steps.model_test as step_module

    tmp, model, bento = bento_inputs
    spec = get_step("model_test")
    ctx = ctx_for(tmp_path, "ok")
    # while the step's service answers its checks, its processes are found by their BentoML home: this makes the
    # "stopped" assertion at the end able to fail (a marker that never matches would pass it)
    running: list[int] = []
    check_service = step_module.check_service

    def check_and_look(*args, **kwargs):
        running.extend(processes_using(ctx.scratch / "bentoml_home"))
        return check_service(*args, **kwargs)

    monkeypatch.setattr(step_module, "check_service", check_and_look)
    params = spec.params(duration_s=1.5, concurrency=3, max_requests=200, warmup_requests=1, max_p95_ms=5000)
    summary = run_step(ctx, params, bento=bento, model=model)
    assert len(running) >= 2, running  # the server and its worker
    assert summary["passed"] and summary["concurrent_rps"] > 0
    rep = json.loads((ctx.output("report") / "report.json").read_text())
    assert rep["passed"] and rep["model_run_id"] == "20260101-000000-abcd"
    assert all(c["passed"] for c in rep["checks"]) and len(rep["checks"]) >= 12
    seq, conc = rep["load_test"]
    assert seq["phase"] == "sequential" and conc["concurrency"] == 3
    assert seq["requests"] > 0 and conc["requests"] > 0 and seq["errors"] == conc["errors"] == 0
    assert conc["p50_ms"] <= conc["p95_ms"] <= conc["p99_ms"] <= conc["max_ms"]
    assert (ctx.output("report") / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "all checks passed" in (ctx.output("report") / "report.html").read_text()
    assert not processes_using(ctx.scratch / "bentoml_home")  # the service and its workers were stopped


def test_model_test_fails_on_a_mismatch_after_writing_its_report(bento_inputs, tmp_path):
    tmp, model, bento = bento_inputs
    # the step compares with the `model` entity; a reference that differs from the served one must fail
    other = tmp_path / "model"
    shutil.copytree(model, other)
    ref = json.loads((other / "reference.json").read_text())
    # one box more than the model finds: a mismatch whatever the test image holds
    ref["detections"] = ref["detections"] + [{"box": [1.0, 1.0, 20.0, 20.0], "score": 0.99, "category_id": 1,
                                              "category_name": "person"}]
    (other / "reference.json").write_text(json.dumps(ref))
    spec = get_step("model_test")
    ctx = ctx_for(tmp_path, "bad")
    with pytest.raises(RuntimeError, match="model_test failed"):
        run_step(ctx, spec.params(duration_s=0.5, max_requests=5, warmup_requests=0), bento=bento, model=other)
    rep = json.loads((ctx.output("report") / "report.json").read_text())
    assert not rep["passed"]
    failed = [c["name"] for c in rep["checks"] if not c["passed"]]
    assert any("test_result" in n for n in failed) and any("matches the reference" in n for n in failed)
    assert any("load test" in n for n in failed)  # every load-test response mismatched the reference
    assert not processes_using(ctx.scratch / "bentoml_home")


def test_model_test_refuses_a_non_loopback_host_and_reports_a_missing_bento(bento_inputs, tmp_path):
    spec = get_step("model_test")
    model = bento_inputs[1]  # a valid pack: the runner loads the `model` entity before the step runs
    with pytest.raises(ValueError, match="loopback"):
        run_step(ctx_for(tmp_path, "host"), spec.params(host="0.0.0.0"), bento=tmp_path, model=model)
    ctx = ctx_for(tmp_path, "nobento")
    with pytest.raises(RuntimeError, match="expected one .bento archive"):
        run_step(ctx, spec.params(), bento=tmp_path / "nobento", model=model)
    rep = json.loads((ctx.output("report") / "report.json").read_text())
    assert not rep["passed"] and "FileNotFoundError" in rep["error"]
