"""A fix for BentoML's request-timeout middleware, applied in the service's workers.

BentoML 1.4's `TimeoutMiddleware` (bentoml/_internal/server/http/traffic.py) arms `loop.call_later(timeout, ...)`
for every request and never cancels it: the timer, its future and the request's context (OpenTelemetry span,
attributes) stay alive for `timeout` seconds (`traffic.timeout`, our `request_timeout_s`, 60 s) after the
response went out. The worker's memory then grows with request rate x timeout: measured about 5 KB per request
(e.g. 30 MB at 100 req/s, 300 MB at 1,000 req/s of a cheap endpoint) until the first timers fire. Same
behaviour, minus the leak: the timer is cancelled once the request is over.

The fix replaces the class's `__call__` only when the class still looks like the one it was written against
(it has the `_set_timer_out` helper the fix calls); otherwise it logs and leaves BentoML alone.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def _call_with_cancelled_timer(self, scope, receive, send) -> None:
    """BentoML's TimeoutMiddleware.__call__: a 504 after `self.timeout` s without a response start."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    task = asyncio.ensure_future(self.app(scope, receive, _send))
    try:
        await waiter
    except asyncio.TimeoutError:
        if task.cancel():
            from starlette.responses import JSONResponse

            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)
    else:
        await task
    finally:
        timer.cancel()


def fix_timeout_middleware() -> bool:
    """Install the fix (idempotent); False when BentoML's class is not the one it was written for."""
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return False
    if TimeoutMiddleware.__call__ is _call_with_cancelled_timer:
        return True
    if not callable(getattr(TimeoutMiddleware, "_set_timer_out", None)):
        log.warning("BentoML's TimeoutMiddleware changed; its per-request timer fix is not applied")
        return False
    TimeoutMiddleware.bentoml_call = TimeoutMiddleware.__call__  # kept for the test that shows the leak
    TimeoutMiddleware.__call__ = _call_with_cancelled_timer
    return True
