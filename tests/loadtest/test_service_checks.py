"""model_test's REST checks against the service (cvpipe.serving.service) run in-process by uvicorn on
loopback: fast, no Bento. The real `bentoml serve` is exercised by test_model_test_step.py."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from coco_data import need_data

from cvpipe.loadtest.checks import check_service, match_detections
from cvpipe.loadtest.runner import RequestSpec, run_load_test

from .test_loadtest import serve_in_thread


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from evaluation.helpers import DEV
    from evaluation.packed_model import write_packed_model

    need_data()
    gt = json.loads((DEV / "annotations.json").read_text())
    return write_packed_model(tmp_path_factory.mktemp("svc") / "model", gt, run_id="run-123")


@pytest.fixture(scope="module")
def api(packed):
    from serving.inprocess import service_app, service_env

    with service_env(packed), serve_in_thread(service_app(), start_timeout_s=15) as url:
        yield url


class ReadyzClient(httpx.Client):
    """The bare Starlette app has no /readyz (BentoML adds it): answer it with /info."""

    def get(self, url, **kw):
        return super().get("/info" if url == "/readyz" else url, **kw)


def test_all_checks_pass_on_a_correct_service(api, packed):
    with ReadyzClient(base_url=api, timeout=30) as client:
        checks, reference = check_service(client, packed, "run-123", 0.99, 1e-3)
    failed = [c for c in checks if not c.passed]
    assert not failed, failed
    names = " | ".join(c.name for c in checks)
    for what in ("test_data", "test_result", "predict on the test image", "run id", "empty body", "garbage",
                 "truncated JPEG"):
        assert what in names
    assert len(reference["detections"]) > 0


def test_checks_catch_a_wrong_reference_and_run_id(api, packed, tmp_path):
    other = tmp_path / "model"
    shutil.copytree(packed, other)
    ref = json.loads((other / "reference.json").read_text())
    ref["detections"][0]["box"][2] += 20  # one box moved: IoU < 0.99
    (other / "reference.json").write_text(json.dumps(ref))
    (other / "test_image.jpg").write_bytes((other / "test_image.jpg").read_bytes() + b"\0")
    with ReadyzClient(base_url=api, timeout=30) as client:
        checks, _ = check_service(client, other, "another-run", 0.99, 1e-3)
    failed = {c.name.split(" ")[0] for c in checks if not c.passed}
    assert failed == {"test_data", "test_result", "predict", "info"}


def test_load_test_against_the_api_with_reference_check(api, packed):
    ref = json.loads((packed / "reference.json").read_text())["detections"]
    data = (packed / "test_image.jpg").read_bytes()

    def check(resp):
        ok, detail = match_detections(resp.json()["detections"], ref)
        return None if ok else detail

    phases = run_load_test(api, RequestSpec("/predict", files={"image": ("t.jpg", data, "image/jpeg")}),
                           duration_s=0.8, concurrency=2, max_requests=15, warmup_requests=1, check=check)
    for ph in phases:
        st = ph.stats()
        assert st["requests"] >= 2 and st["errors"] == 0, ph.errors[:1]


def test_match_detections_rules():
    a = {"box": [0, 0, 100, 100], "score": 0.9, "category_id": 1}
    b = {"box": [200, 200, 250, 260], "score": 0.5, "category_id": 3}
    assert match_detections([b, a], [a, b])[0]  # order does not matter
    assert not match_detections([a], [a, b])[0]  # count differs
    assert not match_detections([{**a, "category_id": 2}, b], [a, b])[0]  # class differs
    assert not match_detections([{**a, "score": 0.9015}, b], [a, b])[0]  # score beyond 1e-3
    assert match_detections([{**a, "score": 0.9009}, b], [a, b])[0]
    assert not match_detections([{**a, "box": [0, 0, 100, 102]}, b], [a, b])[0]  # IoU 0.980
    assert match_detections([{**a, "box": [0, 0, 100, 100.5]}, b], [a, b])[0]  # IoU 0.995
    assert match_detections([], [])[0]
