"""The same runner and store code against an S3 endpoint (moto's standalone server on 127.0.0.1)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import moto  # noqa: F401 - the dev and s3 extras install both: a broken install fails here, never skips
import pytest
import s3fs  # noqa: F401

from cvpipe.pipeline.runner import Runner
from cvpipe.serving.process import free_port
from cvpipe.store import ArtifactStore


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    port = free_port()
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": url, "AWS_ENDPOINT_URL": url}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
    fs.mkdir("cvpipe-test")
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


def test_runner_on_s3_matches_local(s3_endpoint, toy_cfg, tmp_path):
    s3_cfg = toy_cfg(store="s3://cvpipe-test/stores/a")
    s3_runs = Runner(s3_cfg).run(["toy_source", "toy_double"])
    local_runs = Runner(toy_cfg()).run(["toy_source", "toy_double"])
    for s3r, lr in zip(s3_runs, local_runs):
        assert s3r.manifest["outputs"].keys() == lr.manifest["outputs"].keys()
        for name in s3r.manifest["outputs"]:
            assert s3r.manifest["outputs"][name]["digest"] == lr.manifest["outputs"][name]["digest"]
        assert s3r.manifest["outputs"][next(iter(s3r.manifest["outputs"]))]["uri"].startswith("s3://cvpipe-test/stores/a/test/toy/")
    store = ArtifactStore(s3_cfg.store, env="test", pipeline="toy", cache_dir=tmp_path / "cache")
    latest = store.latest_run("toy_double")
    assert latest.run_id == s3_runs[1].run_id
    local = store.materialize(latest, "doubled")
    assert (local / "part2.txt").read_text() == "[4, 6]"
    blobs = store.materialize(store.latest_run("toy_source"), "blobs")
    assert sorted(p.read_text() for p in blobs.iterdir()) == ["hello-0", "hello-0", "hello-1", "hello-1"]
    # cached on the second pass, as locally
    again = Runner(toy_cfg(store="s3://cvpipe-test/stores/a")).run(["toy_source", "toy_double"])
    assert [r.run_id for r in again] == [r.run_id for r in s3_runs]
