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
