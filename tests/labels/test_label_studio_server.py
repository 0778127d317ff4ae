"""The round trip against a real Label Studio server, started here on loopback with its own SQLite database:
tasks with pre-annotations in, an annotator's corrections (made through the REST API) out, and back as a data
version that data_load and data_prep accept. Label Studio lives in its own virtual environment (its pins clash
with cvpipe's): `make labelstudio` makes .venv-labelstudio, or point CVPIPE_LABEL_STUDIO at its executable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

from cvpipe.data.schema import DetectionDataset
from cvpipe.labels.corrections import write_corrected_version
from cvpipe.labels.labelstudio import (
    ExportSource,
    LabelStudio,
    build_tasks,
    corrected_boxes,
    label_config,
)

pytestmark = pytest.mark.slow
TOKEN = "cvpipe0test0token00000000000000000000000"


def label_studio_executable() -> Path:
    """CVPIPE_LABEL_STUDIO, else .venv-labelstudio in the checkout; skipped where absent, failed in CI."""
    path = Path(os.environ.get("CVPIPE_LABEL_STUDIO", REPO / ".venv-labelstudio" / "bin" / "label-studio"))
    if not path.is_file():
        message = f"Label Studio not installed at {path}: run `make labelstudio` (or set CVPIPE_LABEL_STUDIO)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, prepared):
    exe = label_studio_executable()
    home = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(home), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
           "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(prepared[1])}
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen([str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
                                 "--data-dir", str(home / "data"), "--username", "qa@example.com", "--password",
                                 "cvpipe-test-pass", "--user-token", TOKEN, "--enable-legacy-api-token"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield _wait_until_up(LabelStudio(f"http://127.0.0.1:{port}", TOKEN, timeout=30), proc, home)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_until_up(client: LabelStudio, proc: subprocess.Popen, home: Path) -> LabelStudio:
    deadline = time.monotonic() + 600  # the first start migrates a fresh SQLite database: minutes on a busy CPU
    while True:
        try:
            client.call("GET", "/api/projects")
            return client
        except RuntimeError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Label Studio did not start; log: {(home / 'server.log').read_text()[-2000:]}") from None
            time.sleep(2)


def test_round_trip_through_label_studio(server, prepared, tmp_path, monkeypatch):
    import pandas as pd

    from cvpipe.config import load_config
    from cvpipe.labels.find import LabelCheckParams, find_label_errors, load_queues
    from cvpipe.labels.oof import OOFParams
    from cvpipe.pipeline.runner import Runner

    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    dataset, images = prepared
    ds = DetectionDataset.load(dataset)
    find_label_errors(dataset, images, LabelCheckParams(oof=OOFParams(scheme="pretrained", tiles=False),
                                                        selftest_seeds=1), tmp_path / "p", tmp_path / "q", None)
    tasks = build_tasks(ds, load_queues(tmp_path / "q"), 3, ExportSource("RUN"),
                        pd.read_parquet(tmp_path / "p" / "predictions.parquet"))
    project = server.create_project("cvpipe test", label_config(ds.class_names))
    assert server.import_tasks(project, tasks) == len(tasks) > 0
    stored = server.tasks(project)
    assert len(stored) == len(tasks)
    # the annotator: on the first task deletes the first region; accepts the pre-annotation everywhere else
    submitted = {}
    for n, t in enumerate(stored):
        full = server.call("GET", f"/api/tasks/{t['id']}")
        result = full["predictions"][0]["result"]
        result = result[1:] if n == 0 else result
        server.annotate(t["id"], result)
        submitted[full["data"]["cvpipe_image_id"]] = result
    export = server.export(project)
    corrected = corrected_boxes(export, ds, "RUN")
    assert set(corrected) == set(submitted)
    for image_id, result in submitted.items():
        assert sorted(name for name, _ in corrected[image_id]) == \
            sorted(r["value"]["rectanglelabels"][0] for r in result)
    write_corrected_version(ds, images, corrected, tmp_path / "v2")
    config = tmp_path / "v2.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\npipeline: v2\ndata_load: {{source: {tmp_path / 'v2'}, "
                      f"format: coco}}\ndata_prep: {{split_from_source: true, executor: serial}}\n")
    runner = Runner(load_config(config))
    _, prep = runner.run(["data_load", "data_prep"])
    new = DetectionDataset.load(runner.store.materialize(prep, "dataset"))
    for image_id, result in submitted.items():
        assert int((new.annotations["image_id"] == image_id).sum()) == len(result)
