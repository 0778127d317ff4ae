"""AdmissionControl: the ASGI middleware in front of the BentoML endpoints; it decides which requests get in,
and never looks inside a body (BentoML parses the multipart form, the endpoint decodes the image).

BentoML's own concurrency limit counts a request while its body is still arriving, so a few dozen clients that
trickle their bodies would hold every slot (issue 16), and bodies waiting for a slot were held uncounted
(issue 24 item 11). Per worker, for the endpoints that take a body (/predict, /admin/reload, /admin/release):
1. a Content-Length over the limit is 413 before the body is read (what the client sends anyway is read and
   dropped, up to twice the limit within the body deadline, so it reads the 413 instead of a connection reset;
   every refusal before the body is read does the same);
2. the body's bytes are reserved in the worker's UploadBudget (declared length up front; a chunked body as it
   arrives) and stay reserved until the answer is sent: all bodies arriving, waiting or in processing share
   one budget (503 past it);
3. the body arrives into ONE buffer within body_timeout_s (else 408);
4. a processing slot is taken (max_concurrency; waiting up to queue_timeout_s, else 503);
5. the buffer is handed to the app and dropped as it is read: BentoML's copy is then the only one.
Routing only: a /predict body that is not multipart/form-data is the image itself (curl --data-binary sends
application/x-www-form-urlencoded): it goes to RAW_PREDICT; GET reaches the read-only endpoints, which BentoML
routes as POST.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from cvpipe.serving.errors import RequestRefused, error_body
from cvpipe.serving.settings import ServiceSettings

PREDICT = "/predict"
RAW_PREDICT = "/predict/raw"
READ_ONLY = frozenset({"/info", "/test_data", "/test_result"})
ADMIN = frozenset({"/admin/reload", "/admin/release"})
ADMIN_MAX_BODY = 65536
PIECE = 2**20  # bytes per message when the buffered body is handed to the app

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class UploadBudget:
    """Bytes of request bodies one worker holds; a reservation that does not fit is refused at once."""

    def __init__(self, total_bytes: int):
        self.total, self.in_use = int(total_bytes), 0

    def reserve(self, n: int) -> None:
        if self.in_use + n > self.total:
            raise RequestRefused(503, f"the worker holds {self.in_use / 2**20:.0f} MB of uploads (its budget is "
                                      f"{self.total / 2**20:.0f} MB); retry later")
        self.in_use += n

    def release(self, n: int) -> None:
        self.in_use -= n


def name_request() -> None:
    """BentoML names a request (X-BentoML-Request-ID, its access log) after its tracing span; /predict is not
    traced unless `trace_predict`, so it gets a random id here instead."""
    try:
        from bentoml._internal.context import trace_context
    except ImportError:  # BentoML moved it: no id, nothing else changes
        return
    if trace_context.request_id is None:
        trace_context.request_id = secrets.randbits(63)


class AdmissionControl:
    """Pure ASGI middleware (BentoML's add_asgi_middleware); limits from ServiceSettings, read once per worker."""

    def __init__(self, app: Callable[..., Awaitable[None]], settings: ServiceSettings | None = None):
        self.app = app
        self.settings = settings or ServiceSettings.load()
        self.uploads = UploadBudget(self.settings.upload_budget_bytes)
        self._slots: asyncio.Semaphore | None = None  # made in the worker's event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in READ_ONLY and path not in (PREDICT, RAW_PREDICT) \
                and path not in ADMIN:
            return await self.app(scope, receive, send)
        if path in READ_ONLY:  # no body; BentoML routes these as POST
            if scope["method"] in ("GET", "HEAD"):
                scope = {**scope, "method": "POST"}
            return await self.app(scope, receive, send)
        if path not in ADMIN:
            name_request()
        request = _Upload(scope, receive, ADMIN_MAX_BODY if path in ADMIN else self.settings.max_body_bytes)
        try:
            await self._admit(request, send)
        except RequestRefused as e:
            if request.unread and e.status != 408 and not request.expects_continue:
                await self._discard_body(receive, min(request.declared or request.limit, 2 * request.limit))
            await _send_error(send, e, close=request.unread)

    async def _admit(self, request: _Upload, send: Send) -> None:
        s = self.settings
        if request.scope["method"] != "POST":
            raise RequestRefused(405, f"{request.scope['path']} takes POST", {"allow": "POST"})
        declared = request.declared_length()
        self.uploads.reserve(declared or 0)  # before the buffer exists: memory is reserved, then taken
        body = BodyBuffer(declared)
        try:
            try:
                await asyncio.wait_for(self._receive_into(body, request), s.body_timeout_s)
            except TimeoutError:
                raise RequestRefused(408, f"the request body did not arrive within {s.body_timeout_s:g} s") from None
            request.unread = False
            scope = request.scope
            if scope["path"] == PREDICT and not request.header(b"content-type").startswith(b"multipart/form-data"):
                scope = {**scope, "path": RAW_PREDICT, "raw_path": RAW_PREDICT.encode()}
            await self._with_slot(scope, body, send)
        finally:
            self.uploads.release(body.reserved)

    async def _discard_body(self, receive: Receive, most: int) -> None:
        """Read and drop up to `most` bytes within the body deadline, so the client reads the refusal instead
        of a connection reset (nothing is kept: a refused upload costs no memory)."""
        async def drain() -> None:
            seen = 0
            while seen < most:
                message = await receive()
                seen += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
        try:
            await asyncio.wait_for(drain(), self.settings.body_timeout_s)
        except TimeoutError:
            pass

    async def _receive_into(self, body: BodyBuffer, request: _Upload) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise RequestRefused(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            if body.size + len(chunk) > request.limit:
                raise RequestRefused(413, f"request body is over the limit of {request.limit} bytes")
            if body.declared is None:  # chunked: reserved as it arrives
                self.uploads.reserve(len(chunk))
                body.reserved += len(chunk)
            body.append(chunk)
            if not message.get("more_body", False):
                return

    async def _with_slot(self, scope: Scope, body: BodyBuffer, send: Send) -> None:
        s = self.settings
        if self._slots is None:
            self._slots = asyncio.Semaphore(s.max_concurrency)
        try:
            await asyncio.wait_for(self._slots.acquire(), s.queue_timeout_s)
        except TimeoutError:
            raise RequestRefused(503, f"the worker is busy ({s.max_concurrency} requests in progress for "
                                      f"{s.queue_timeout_s:g} s); retry later") from None
        try:
            await self.app(scope, body.replay(), send)
        finally:
            self._slots.release()


class _Upload:
    """One request on its way in: its headers, body limit, and whether its body is still unread."""

    def __init__(self, scope: Scope, receive: Receive, limit: int):
        self.scope, self.receive, self.limit = scope, receive, limit
        self.headers = dict(scope.get("headers") or [])
        self.declared: int | None = None
        self.unread = True
        self.expects_continue = self.header(b"expect") == b"100-continue"  # its body comes only when asked for

    def header(self, name: bytes) -> bytes:
        return self.headers.get(name, b"").lower()

    def declared_length(self) -> int | None:
        """Content-Length (None for a chunked body); 413 before a byte is read when it is over the limit."""
        raw = self.headers.get(b"content-length")
        if raw is None:
            return None
        try:
            self.declared = int(raw)
        except ValueError:
            raise RequestRefused(400, f"bad Content-Length header {raw[:40]!r}") from None
        if self.declared > self.limit:
            raise RequestRefused(413, f"request body of {self.declared} bytes is over the limit of {self.limit} "
                                      "bytes")
        return self.declared


class BodyBuffer:
    """A request body in one buffer: sized from Content-Length when there is one (one allocation, which glibc
    maps and unmaps whole: the memory goes back when the request ends), grown otherwise."""

    def __init__(self, declared: int | None):
        self.declared = declared
        self.data: bytearray | None = bytearray(declared) if declared else bytearray()
        self.size = 0
        self.reserved = declared or 0  # bytes of the UploadBudget this body holds

    def append(self, chunk: bytes) -> None:
        assert self.data is not None
        end = self.size + len(chunk)
        if self.declared is not None:
            if end > self.declared:
                raise RequestRefused(400, f"the body is longer than its Content-Length of {self.declared} bytes")
            self.data[self.size:end] = chunk
        else:
            self.data += chunk
        self.size = end

    def replay(self) -> Receive:
        """`receive` for the app: the body in PIECE-sized messages, the buffer dropped after the last one."""
        if self.declared is not None and self.size != self.declared:
            raise RequestRefused(400, f"the body has {self.size} bytes, its Content-Length says {self.declared}")
        offset = 0

        async def receive() -> Message:
            nonlocal offset
            if self.data is None:
                await asyncio.Event().wait()  # like a client that stays connected: never a second body
            assert self.data is not None  # the wait above never ends
            view = memoryview(self.data)[offset:min(offset + PIECE, self.size)]
            piece = bytes(view)
            view.release()
            offset += len(piece)
            more = offset < self.size
            if not more:
                self.data = None
            return {"type": "http.request", "body": piece, "more_body": more}

        return receive


async def _send_error(send: Send, e: RequestRefused, close: bool) -> None:
    body = error_body(e)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.encode(), v.encode()) for k, v in e.headers.items())]
    if close:  # the body was not (all) read: the connection cannot be reused
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": e.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
