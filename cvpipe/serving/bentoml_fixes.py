"""Fixes for BentoML 1.4, applied in the service's workers by `apply_fixes()`; each one replaces a function only
when BentoML's still looks like the one it was written against, else it logs and leaves BentoML alone.

1. The request-timeout middleware keeps a timer per request alive (below).
2. Error bodies: BentoML answers an exception raised in an endpoint with `[{"error": ...}]` (a one-element
   tuple serialised as a list) and logs a traceback for every bad request. Our RequestRefused gets
   `{"error": message}`, its headers, and no traceback; a pydantic validation error of an input (say score_thr
   "abc") becomes the same 400.
3. Input parsing: for a file input, a multipart *text* field is taken as a URL and downloaded by the worker
   (unbounded size: memory past every limit, and a server-side request): a file field must be a file part.
   A hostile multipart body makes the parser raise anything (a file under a text field's name: UnicodeDecodeError;
   a 300-character file name: OSError ENAMETOOLONG; oversized part headers: starlette's HTTPException): BentoML
   answers these 500. Whatever fails while a request's input is parsed is the request's fault: 400 (a full
   temp disk: 503).

Timer (1):
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
HINT = "; send the image as the multipart file field 'image' or as the raw request body"


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
    except TimeoutError:
        if task.cancel():
            from starlette.responses import JSONResponse

            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)
    else:
        await task
    finally:
        timer.cancel()


def apply_fixes() -> dict[str, bool]:
    """All three fixes; {fix: applied}."""
    return {"timeout_timer": fix_timeout_middleware(), "error_bodies": fix_error_bodies(),
            "input_parsing": fix_input_parsing()}


async def _api_endpoint_with_our_errors(self, name: str, request):
    """ServiceAppFactory.api_endpoint, answering RequestRefused and input validation errors itself."""
    from pydantic import ValidationError
    from starlette.responses import Response

    from cvpipe.serving.errors import RequestRefused, error_body

    try:
        return await self.bentoml_api_endpoint(name, request)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        refused = RequestRefused(400, f"the request has no '{where}' field{HINT}" if first.get("type") == "missing"
                                 else f"invalid {where or 'input'}: {first.get('msg')}")
    except RequestRefused as e:
        refused = e
    return Response(error_body(refused), refused.status, refused.headers, media_type="application/json")


def fix_error_bodies() -> bool:
    """Install fix 2 (idempotent); False when BentoML's app factory is not the one it was written for."""
    try:
        from _bentoml_impl.server.app import ServiceAppFactory
    except ImportError:
        return False
    return _replace_method(ServiceAppFactory, "api_endpoint", _api_endpoint_with_our_errors,
                           expects="api_endpoint_wrapper", what="its error bodies")


async def _file_parts_only(obj):
    """MultipartSerde.ensure_file without the download: a text value for a file input is refused."""
    from starlette.datastructures import UploadFile

    from cvpipe.serving.errors import RequestRefused

    if isinstance(obj, UploadFile):
        return obj
    raise RequestRefused(400, "a file field must be a file part (curl -F image=@photo.jpg), not text; URLs are "
                              "not fetched")


async def _parse_input(cls, request, serde):
    """IOMixin.from_http_request, where a failure to parse the client's body is a 400."""
    import errno

    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    from cvpipe.serving.errors import RequestRefused

    try:
        return await cls.bentoml_from_http_request(request, serde)
    except (RequestRefused, ValidationError):
        raise
    except HTTPException as e:
        raise RequestRefused(e.status_code if 400 <= e.status_code < 500 else 400,
                             f"malformed request body: {e.detail}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise RequestRefused(400, "malformed request body: a part's file name is too long") from None
        raise RequestRefused(503, f"the worker cannot store the upload ({e.strerror}); retry later") from None
    except Exception as e:  # noqa: BLE001 - the parser failed on what the client sent
        raise RequestRefused(400, f"malformed request body ({type(e).__name__}){HINT}") from None


def fix_input_parsing() -> bool:
    """Install fix 3 (idempotent)."""
    try:
        from _bentoml_impl.serde import MultipartSerde
        from _bentoml_sdk.io_models import IOMixin
    except ImportError:
        return False
    parse = IOMixin.__dict__.get("from_http_request")
    if isinstance(parse, classmethod) and parse.__func__ is _parse_input:
        return True
    if not isinstance(parse, classmethod) or not callable(getattr(MultipartSerde, "ensure_file", None)):
        log.warning("BentoML's IOMixin/MultipartSerde changed; input parsing errors and URL inputs are not fixed")
        return False
    IOMixin.bentoml_from_http_request = parse
    IOMixin.from_http_request = classmethod(_parse_input)
    MultipartSerde.bentoml_ensure_file = MultipartSerde.ensure_file  # kept for the test that shows the difference
    MultipartSerde.ensure_file = staticmethod(_file_parts_only)
    return True


def fix_timeout_middleware() -> bool:
    """Install the fix (idempotent); False when BentoML's class is not the one it was written for."""
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return False
    return _replace_method(TimeoutMiddleware, "__call__", _call_with_cancelled_timer,
                           expects="_set_timer_out", what="its per-request timer")


def _replace_method(cls: type, name: str, ours, *, expects: str, what: str) -> bool:
    """Swap BentoML's `cls.name` for ours (idempotent), keeping theirs as `cls.bentoml_<name>` for the tests that
    show the difference; refused (False, logged) when `cls` lacks `expects`, i.e. is not the code the fix was
    written for."""
    if getattr(cls, name) is ours:
        return True
    if not callable(getattr(cls, expects, None)):
        log.warning("BentoML's %s changed; %s is not fixed", cls.__name__, what)
        return False
    setattr(cls, f"bentoml_{name.strip('_')}", getattr(cls, name))
    setattr(cls, name, ours)
    return True
