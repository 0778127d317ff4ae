"""BentoML's TimeoutMiddleware left one live timer (holding the request's context) per request for `timeout`
seconds; cvpipe.serving.bentoml_fixes cancels it when the request is over, keeping the 504 on a slow request."""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from cvpipe.serving.bentoml_fixes import fix_timeout_middleware


async def fast_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)
    await fast_app(scope, receive, send)


async def _serve(middleware, call, n: int) -> tuple[list[int], int]:
    """Statuses of n requests through `call`, and the middleware's timers still armed afterwards."""
    statuses: list[int] = []

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(n):
        await call(middleware, {"type": "http", "path": "/x", "method": "GET", "headers": []}, receive, send)
    loop = asyncio.get_running_loop()
    return statuses, sum(1 for h in loop._scheduled if not h.cancelled() and h._callback == middleware._set_timer_out)


def test_no_timer_outlives_its_request():
    assert fix_timeout_middleware()
    mw = TimeoutMiddleware(fast_app, timeout=60)
    statuses, armed = asyncio.run(_serve(mw, TimeoutMiddleware.__call__, 50))
    assert statuses == [200] * 50 and armed == 0
    statuses, armed = asyncio.run(_serve(mw, TimeoutMiddleware.bentoml_call, 50))  # BentoML's own: the leak
    assert statuses == [200] * 50 and armed == 50


def test_a_slow_request_still_gets_504():
    assert fix_timeout_middleware()
    statuses, armed = asyncio.run(_serve(TimeoutMiddleware(slow_app, timeout=0.05), TimeoutMiddleware.__call__, 2))
    assert statuses == [504, 504] and armed == 0


def test_the_service_module_installs_it():
    import cvpipe.serving.service  # noqa: F401

    assert TimeoutMiddleware.__call__.__module__ == "cvpipe.serving.bentoml_fixes"


# --- error bodies and input parsing (fixes 2 and 3), on a toy BentoML service in this process ---------------

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import bentoml  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from cvpipe.serving.bentoml_fixes import apply_fixes  # noqa: E402
from cvpipe.serving.errors import RequestRefused  # noqa: E402


@bentoml.service
class Toy:
    @bentoml.api
    def size(self, image: Path) -> dict:
        data = image.read_bytes()
        if len(data) > 4:
            raise RequestRefused(413, "too big for a toy", details={"limit": 4})
        return {"bytes": len(data)}


@contextlib.contextmanager
def bentoml_unfixed():
    """BentoML's own request handling, for the duration of the block."""
    from _bentoml_impl.serde import MultipartSerde
    from _bentoml_impl.server.app import ServiceAppFactory
    from _bentoml_sdk.io_models import IOMixin

    apply_fixes()
    ours = (ServiceAppFactory.api_endpoint, IOMixin.__dict__["from_http_request"], MultipartSerde.ensure_file)
    ServiceAppFactory.api_endpoint = ServiceAppFactory.bentoml_api_endpoint
    IOMixin.from_http_request = IOMixin.__dict__["bentoml_from_http_request"]
    MultipartSerde.ensure_file = staticmethod(MultipartSerde.bentoml_ensure_file)
    try:
        yield
    finally:
        ServiceAppFactory.api_endpoint, IOMixin.from_http_request = ours[:2]
        MultipartSerde.ensure_file = staticmethod(ours[2])


_apps: list = []


def _toy_app():
    """One app of the toy service per process (BentoML registers its metrics once per service)."""
    if not _apps:
        _apps.append(Toy.to_asgi(is_main=True))
    return _apps[0]


def _answers() -> dict[str, tuple[int, object]]:
    cases = {"refused": {"files": {"image": ("a.bin", b"123456")}},
             "ok": {"files": {"image": ("a.bin", b"12")}},
             "file under another name": {"files": {"other": ("a.jpg", b"\xff\xd8\xff\xe0"), "image": ("a.bin", b"1")}},
             "300-character file name": {"files": {"image": ("a" * 300, b"12")}},
             "URL in the file field": {"data": {"image": "http://127.0.0.1:9/x"}, "files": {"o": ("o", b"o")}}}
    with TestClient(_toy_app()) as client:
        out = {}
        for name, kwargs in cases.items():
            r = client.post("/size", **kwargs)
            out[name] = (r.status_code, r.json())
        return out


def test_refusals_are_json_objects_and_bad_multipart_is_400():
    apply_fixes()
    ours = _answers()
    with bentoml_unfixed():
        theirs = _answers()
    print(f"\nBentoML's: {theirs}\nours: {ours}")
    assert ours["refused"] == (413, {"error": "too big for a toy", "limit": 4})
    assert theirs["refused"][0] == 413 and isinstance(theirs["refused"][1], list)  # [{"error": ...}]
    assert ours["ok"] == theirs["ok"] == (200, {"bytes": 2})
    for name in ("file under another name", "300-character file name"):
        assert theirs[name][0] == 500 and ours[name][0] == 400 and "malformed" in ours[name][1]["error"], name
    assert ours["URL in the file field"] == (400, {"error": "a file field must be a file part (curl -F "
                                                            "image=@photo.jpg), not text; URLs are not fetched"})
    assert "URLs are not fetched" not in str(theirs["URL in the file field"])
