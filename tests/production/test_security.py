"""Security basics: no pickle loading of untrusted files, request size limit, no path-taking endpoints,
admin endpoint off without a token. (Archive extraction against path traversal: tests/data.)
The token-never-logged check runs against a real server in test_hot_swap.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]


def test_every_torch_load_is_weights_only():
    calls = []
    for py in (REPO / "cvpipe").rglob("*.py"):
        text = py.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            if text[line_start:m.start()].lstrip().startswith(("#", '"""')) or "`" in text[line_start:m.start()]:
                continue
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[m.start():i]
            if "weights_only" in text[line_start:m.start()] and "(" not in text[m.end():m.end() + 1]:
                continue  # prose, e.g. "loads with torch.load(weights_only=True)" in a docstring
            calls.append((py.relative_to(REPO), call))
    real = [(p, c) for p, c in calls if not c.startswith("torch.load(weights_only")]
    assert real, "expected at least one torch.load call in cvpipe (checkpoint loading)"
    unsafe = [(str(p), c) for p, c in real if "weights_only=True" not in c]
    assert not unsafe, f"torch.load without weights_only=True (pickle of untrusted files): {unsafe}"


def test_no_pickle_or_unsafe_yaml_in_cvpipe():
    bad = []
    for py in (REPO / "cvpipe").rglob("*.py"):
        text = py.read_text()
        if re.search(r"^\s*import pickle|pickle\.loads?\(|yaml\.load\((?!.*SafeLoader)|yaml\.unsafe_load", text, re.M):
            bad.append(str(py.relative_to(REPO)))
    assert not bad, f"unsafe deserialisation in {bad}"


@pytest.fixture(scope="module")
def client(model_store):
    from serving.inprocess import service_app, service_env

    with service_env(model_store["a"]["model"], max_body_bytes=100_000), TestClient(service_app()) as client:
        yield client


def test_body_over_the_limit_is_413(client):
    r = client.post("/predict", content=b"\xff" * 200_000, headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = client.post("/predict", files={"image": ("x.jpg", b"\xff" * 200_000, "image/jpeg")})
    assert r.status_code == 413


def test_test_data_ignores_paths(client, model_store):
    packed = client.get("/test_data").content
    assert packed == next(Path(model_store["a"]["model"]).glob("test_image.*")).read_bytes()
    for q in ("?path=/etc/passwd", "?file=../../model.json", "?name=/etc/hostname"):
        r = client.get("/test_data" + q)
        assert r.status_code == 200 and r.content == packed
    for p in ("/test_data/../../etc/passwd", "/static/../etc/passwd", "/files/etc/passwd", "/test_data/x"):
        assert client.get(p).status_code == 404
    assert b"root:" not in client.get("/test_result?path=/etc/passwd").content


def test_admin_is_off_without_a_token(client):
    assert client.post("/admin/reload", json={"run_id": "latest"}).status_code == 404
