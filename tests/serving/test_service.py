"""The packed .bento served by a REAL `bentoml serve` (imported into an empty BentoML home) over HTTP."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from cvpipe.serving.process import ServiceProcess, ServiceStartError

MAX_BODY = 3_000_000


@pytest.fixture(scope="module")
def service(packed, tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml_home")
    assert not any(home.iterdir())  # an empty BentoML home: the archive alone must be enough
    archive = packed["bento"] / f"{packed['summary']['bento']}"
    with ServiceProcess(archive, bentoml_home=home, env={"CVPIPE_MAX_BODY_BYTES": str(MAX_BODY)}) as svc:
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            yield client
    assert svc.proc is None


@pytest.fixture(scope="module")
def test_image(packed):
    path = next(packed["model"].glob("test_image.*"))
    return path.name, path.read_bytes()


@pytest.fixture(scope="module")
def reference(packed):
    return json.loads((packed["model"] / "reference.json").read_text())


def alive(client) -> bool:
    return client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_predict_on_the_test_image_equals_test_result(service, test_image, reference):
    name, data = test_image
    r = service.post("/predict", files={"image": (name, data, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json() == reference
    again = service.post("/predict", files={"image": (name, data, "image/jpeg")})
    ids = {r.headers.get("x-bentoml-request-id"), again.headers.get("x-bentoml-request-id")}
    assert None not in ids and len(ids) == 2  # each answer is named, untraced /predict too (trace_predict)
    assert service.post("/test_result").json() == reference
    assert any(d["category_name"] == "person" for d in reference["detections"])
    raw = service.post("/predict", content=data, headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 200 and raw.json() == reference


def test_score_thr_parameter(service, test_image, reference):
    name, data = test_image
    low = service.post("/predict", params={"score_thr": 0.05}, files={"image": (name, data)}).json()
    high = service.post("/predict", files={"image": (name, data)}, data={"score_thr": "0.8"}).json()
    assert len(low["detections"]) > len(reference["detections"]) >= len(high["detections"])
    assert all(d["score"] >= 0.8 for d in high["detections"])


def test_test_data_info_and_bentoml_endpoints(service, test_image, packed):
    assert service.post("/test_data").content == test_image[1]
    assert service.get("/test_data").headers["content-type"] == "image/jpeg"
    info = service.post("/info").json()
    assert info["version"] == packed["run_id"]
    assert info["input_size"] == [416, 416] and len(info["classes"]) == 80
    assert info["classes"][0] == {"id": 1, "name": "person"}
    metrics = service.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _header_only_png(w, h) -> bytes:
    from .test_images import png_header_only

    return png_header_only(w, h)


@pytest.mark.parametrize("what,kwargs_fn,status,message", [
    ("empty body", lambda d: {"content": b""}, 400, "empty"),
    ("empty file", lambda d: {"files": {"image": ("x.jpg", b"", "image/jpeg")}}, 400, "empty"),
    ("garbage", lambda d: {"content": np.random.default_rng(0).bytes(4096)}, 400, "not an image"),
    ("truncated JPEG", lambda d: {"files": {"image": ("t.jpg", _truncated(d), "image/jpeg")}}, 400, "truncated"),
    ("huge dimensions", lambda d: {"content": _header_only_png(30000, 30000)}, 413, "too large"),
    ("wrong field name", lambda d: {"files": {"file": ("x.jpg", d, "image/jpeg")}}, 400, "field 'image'"),
    ("body over the limit", lambda d: {"content": b"\xff" * (MAX_BODY + 10)}, 413, "limit"),
    ("bad score_thr", lambda d: {"content": d, "params": {"score_thr": "2"}}, 400, "score_thr"),
    ("url-encoded form of text", lambda d: {"data": {"image": "abc"}}, 400, "not an image"),
])
def test_bad_input_is_a_clear_4xx_and_the_service_lives(service, test_image, what, kwargs_fn, status, message):
    r = service.post("/predict", **kwargs_fn(test_image[1]))
    assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
    assert message in r.json()["error"]
    assert alive(service)


def test_unusual_but_valid_images_are_accepted(service):
    a16 = np.full((40, 50), 30000, np.uint16)
    cases = {"grayscale": png(Image.new("L", (50, 40), 90)), "rgba": png(Image.new("RGBA", (50, 40), (9, 9, 9, 9))),
             "16-bit": cv2.imencode(".png", a16)[1].tobytes()}
    for what, data in cases.items():
        r = service.post("/predict", files={"image": (f"{what}.png", data, "image/png")})
        assert r.status_code == 200, f"{what}: {r.text}"
        assert r.json()["image"] == {"width": 50, "height": 40}


def test_start_failure_reports_the_log(tmp_path):
    (tmp_path / "bentofile.yaml").write_text("service: 'nowhere:Nothing'\n")
    with pytest.raises(ServiceStartError, match="log tail"):
        with ServiceProcess(tmp_path, ready_timeout_s=60):
            pass


def test_two_workers_with_adaptive_batching_give_the_reference(packed, test_image, reference, tmp_path):
    archive = packed["bento"] / packed["summary"]["bento"]
    with ServiceProcess(archive, bentoml_home=tmp_path / "home", workers=2,
                        env={"CVPIPE_BATCH_MAX": "4", "CVPIPE_BATCH_WAIT_MS": "5"}) as svc:
        def call(_):
            return httpx.post(svc.url + "/predict", files={"image": test_image}, timeout=60).json()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(16)))
        infos = [httpx.get(svc.url + "/info").json() for _ in range(6)]
        import psutil

        workers = [p for p in psutil.Process(svc.proc.pid).children(recursive=True)
                   if "worker" in " ".join(p.cmdline())]
    assert len(workers) == 2
    assert all(i["batching"]["max_batch"] == 4 for i in infos)
    assert all(r == reference for r in results)


def test_micro_batcher_groups_waiting_requests_in_order():
    import asyncio
    import time

    from cvpipe.serving.engine import MicroBatcher

    def slow_double(batch):
        time.sleep(0.05)
        return batch * 2

    async def main():
        batcher = MicroBatcher(slow_double, ThreadPoolExecutor(1), max_batch=4, max_wait_ms=1)
        outs = await asyncio.gather(*(batcher.submit(np.full((2,), i, np.float32)) for i in range(10)))
        return outs, list(batcher.batch_sizes)

    outs, sizes = asyncio.run(main())
    assert [o.tolist() for o in outs] == [[2 * i, 2 * i] for i in range(10)]
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) < 10


def test_openapi_documents_every_endpoint_and_the_bentoml_client_works(service, test_image, reference, tmp_path):
    import bentoml

    spec = service.get("/docs.json").json()
    for path in ("/predict", "/test_data", "/test_result", "/info", "/readyz", "/livez", "/metrics"):
        assert path in spec["paths"], path
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["image"] and {"image", "score_thr"} <= set(body["properties"])
    image = tmp_path / test_image[0]
    image.write_bytes(test_image[1])
    with bentoml.SyncHTTPClient(str(service.base_url)) as client:
        assert client.predict(image=image) == reference
        low = client.predict(image=image, score_thr=0.05)
        assert len(low["detections"]) >= len(reference["detections"])
        assert client.test_result() == reference
        assert client.info()["run_id"] == reference["model"]["run_id"]


@pytest.mark.parametrize("headers", [{}, {"content-type": "image/jpeg"},
                                     {"content-type": "application/x-www-form-urlencoded"}])
def test_raw_body_in_every_form_curl_sends(service, test_image, reference, headers):
    """`curl --data-binary @photo.jpg URL` sends application/x-www-form-urlencoded: it must work too."""
    r = service.post("/predict", content=test_image[1], headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == reference
    high = service.post("/predict", content=test_image[1], headers=headers, params={"score_thr": 0.99})
    assert high.status_code == 200 and high.json()["detections"] == []


def test_settings_come_from_one_model(tmp_path):
    from cvpipe.serving.settings import ServiceSettings, SettingsError

    (tmp_path / "s.yaml").write_text("workers: 3\nmax_body_bytes: 5000\n")
    s = ServiceSettings.load({"CVPIPE_SETTINGS_FILE": str(tmp_path / "s.yaml"), "CVPIPE_MAX_BODY_BYTES": "9000",
                              "CVPIPE_FOLLOW": "1", "CVPIPE_ADMIN_TOKEN": "x" * 20})
    assert (s.workers, s.max_body_bytes, s.follow) == (3, 9000, True)
    assert s.env()["CVPIPE_ADMIN_TOKEN"] == "x" * 20 and "x" * 20 not in repr(s)
    with pytest.raises(SettingsError, match="CVPIPE_WORKERS"):
        ServiceSettings.load({"CVPIPE_WORKERS": "many"})
    with pytest.raises(SettingsError, match="CVPIPE_NO_SUCH"):
        ServiceSettings.load({}, no_such=1)


def test_one_worker_runs_a_model_call_per_cpu_unless_told(monkeypatch, packed):
    from cvpipe.serving import settings as settings_module
    from cvpipe.serving.engine import DetectorEngine
    from cvpipe.serving.settings import ServiceSettings

    monkeypatch.setattr(settings_module, "usable_cpus", lambda: 3)
    assert ServiceSettings.load({}).model_threads_or_auto == 3
    monkeypatch.setattr(settings_module, "usable_cpus", lambda: 64)
    assert ServiceSettings.load({}).model_threads_or_auto == 8  # capped
    told = ServiceSettings.load({"CVPIPE_MODEL_THREADS": "1"})
    assert told.model_threads_or_auto == 1 and told.env()["CVPIPE_MODEL_THREADS"] == "1"
    assert "CVPIPE_MODEL_THREADS" not in ServiceSettings.load({}).env()  # a child worker decides for itself
    engine = DetectorEngine(packed["model"], ServiceSettings.load({}))
    assert engine.info()["model_threads"] == engine.executor._max_workers == 8
