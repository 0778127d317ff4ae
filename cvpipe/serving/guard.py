"""RequestGuard: the ASGI middleware in front of the BentoML endpoints; what keeps one worker fair to everyone.

BentoML's own concurrency limit is counted while a request body is still arriving, so a few dozen clients that
trickle their bodies hold every slot (issue 16). This guard instead, per worker:
1. refuses a Content-Length over max_body_bytes with 413 before reading a byte of the body;
2. reads the body with a deadline (body_timeout_s for the whole body, else 408), counting bytes held for
   bodies still arriving against max_receiving_mb (503 past it);
3. only then takes one of max_concurrency processing slots (waiting up to queue_timeout_s, else 503);
4. for POST /predict, turns every accepted input form into one canonical multipart request for the typed
   BentoML endpoint: a multipart `image` field, the raw image as the body (any Content-Type, including the
   application/x-www-form-urlencoded that `curl --data-binary` sends), and `score_thr` from the query or
   the form. Client-chosen file names and part headers are dropped; anything malformed is a 400 here.
   BentoML's URL-fetching inputs (a JSON or form string holding a URL) cannot be reached: no SSRF;
5. lets GET reach the read-only endpoints (/info, /test_data, /test_result), which BentoML routes as POST.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Callable
from urllib.parse import parse_qs

PREDICT = "/predict"
READ_ONLY = frozenset({"/info", "/test_data", "/test_result"})
ADMIN = "/admin/reload"
ADMIN_MAX_BODY = 65536


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def parse_score_thr(value) -> float | None:
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise Refused(400, f"score_thr must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= v <= 1.0:  # NaN fails this too
        raise Refused(400, f"score_thr must be between 0 and 1, got {v}")
    return v


_PARAM = re.compile(rb';\s*([a-zA-Z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _params(header_value: bytes) -> dict[str, bytes]:
    return {m.group(1).lower().decode(): m.group(2).strip().strip(b'"') for m in _PARAM.finditer(header_value)}


def split_multipart(body: bytes, content_type: bytes) -> dict[str, bytes]:
    """{field name: first value} of a multipart/form-data body; Refused(400) when malformed."""
    boundary = _params(content_type).get("boundary")
    if not boundary or len(boundary) > 200:
        raise Refused(400, "malformed multipart body: no boundary in the Content-Type header")
    delimiter = b"--" + boundary
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise Refused(400, "malformed multipart body: missing or unterminated parts")
    fields: dict[str, bytes] = {}
    for piece in pieces[1:-1]:
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"\r\n") or not data.endswith(b"\r\n"):
            raise Refused(400, "malformed multipart body: a part without headers")
        disposition = next((line for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-disposition:")), None)
        name = _params(b";" + disposition.split(b";", 1)[-1]).get("name") if disposition else None
        if name is None:
            raise Refused(400, "malformed multipart body: a part without a name")
        fields.setdefault(name.decode("utf-8", "replace"), data[:-2])
        if len(fields) > 16:
            raise Refused(400, "multipart body with more than 16 fields")
    return fields


def canonical_multipart(image: bytes, score_thr: float | None) -> tuple[bytes, bytes]:
    """(body, content type) of the one form the typed endpoint receives."""
    boundary = secrets.token_hex(16).encode()
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="image"\r\n'
             b"Content-Type: image/octet-stream\r\n\r\n", image, b"\r\n"]
    if score_thr is not None:
        parts += [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="score_thr"\r\n\r\n',
                  repr(score_thr).encode(), b"\r\n"]
    parts.append(b"--" + boundary + b"--\r\n")
    return b"".join(parts), b"multipart/form-data; boundary=" + boundary


def predict_request(body: bytes, content_type: bytes, query: bytes) -> tuple[bytes, bytes]:
    """Any accepted /predict input -> canonical multipart (body, content type)."""
    query_thr = parse_qs(query.decode("latin-1")).get("score_thr", [None])[0]
    if content_type.lower().startswith(b"multipart/form-data"):
        fields = split_multipart(body, content_type)
        if "image" not in fields:
            raise Refused(400, f"the multipart form has no 'image' field (fields sent: {sorted(fields) or 'none'}); "
                               "send the image as field 'image' or as the raw request body")
        image, form_thr = fields["image"], fields.get("score_thr")
    else:  # the raw image, whatever the Content-Type says (curl --data-binary sends x-www-form-urlencoded)
        image, form_thr = body, None
    if not image:
        raise Refused(400, "empty image: no bytes (send the image as multipart field 'image' or as the body)")
    score_thr = parse_score_thr(query_thr if query_thr is not None else
                                (form_thr.decode("utf-8", "replace") if form_thr is not None else None))
    return canonical_multipart(image, score_thr)


class RequestGuard:
    """Pure ASGI middleware; `settings()` returns the live ServiceSettings (read per request)."""

    def __init__(self, app, settings: Callable[[], object]):
        self.app, self.settings = app, settings
        self.receiving_bytes = 0
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or (path != PREDICT and path != ADMIN and path not in READ_ONLY):
            return await self.app(scope, receive, send)
        try:
            await self._guarded(scope, receive, send, path)
        except Refused as e:
            await _send_json(send, e.status, {"error": e.message}, e.headers)

    async def _guarded(self, scope, receive, send, path: str) -> None:
        s = self.settings()
        if path in READ_ONLY:  # no body to speak of; BentoML routes these as POST
            if scope["method"] in ("GET", "HEAD"):
                scope = {**scope, "method": "POST"}
            return await self.app(scope, _replay(b""), send)
        if scope["method"] != "POST":
            raise Refused(405, f"{path} takes POST", {"allow": "POST"})
        headers = dict(scope.get("headers") or [])
        limit = ADMIN_MAX_BODY if path == ADMIN else s.max_body_bytes
        body = await self._read_body(receive, headers, limit, s)
        if path == PREDICT:
            body, ctype = predict_request(body, headers.get(b"content-type", b""), scope.get("query_string", b""))
            scope = {**scope, "headers": _with_headers(scope["headers"], ctype, len(body))}
        slots = self._slots_for(s)
        try:
            await asyncio.wait_for(slots.acquire(), s.queue_timeout_s)
        except asyncio.TimeoutError:
            raise Refused(503, f"the worker is busy ({s.max_concurrency} requests in progress for "
                               f"{s.queue_timeout_s:g} s); retry later", {"retry-after": "1"}) from None
        try:
            await self.app(scope, _replay(body), send)
        finally:
            slots.release()

    def _slots_for(self, s) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(s.max_concurrency)
        return self._slots

    async def _read_body(self, receive, headers: dict, limit: int, s) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise Refused(400, f"bad Content-Length header {declared[:40]!r}") from None
            if size > limit:
                raise Refused(413, f"request body of {size} bytes is over the limit of {limit} bytes")
        try:
            return await asyncio.wait_for(self._receive_all(receive, limit, s), s.body_timeout_s)
        except asyncio.TimeoutError:
            raise Refused(408, f"the request body did not arrive within {s.body_timeout_s:g} s") from None

    async def _receive_all(self, receive, limit: int, s) -> bytes:
        chunks, size = [], 0
        budget = s.max_receiving_mb * 2**20
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Refused(400, "the client went away before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                self.receiving_bytes += len(chunk)
                if size > limit:
                    raise Refused(413, f"request body is over the limit of {limit} bytes")
                if self.receiving_bytes > budget:
                    raise Refused(503, "the worker holds too many uploads in progress; retry later",
                                  {"retry-after": "1"})
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.receiving_bytes -= size


def _with_headers(raw: list, content_type: bytes, length: int) -> list:
    kept = [(k, v) for k, v in raw if k not in (b"content-type", b"content-length", b"transfer-encoding")]
    return [*kept, (b"content-type", content_type), (b"content-length", str(length).encode())]


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that stays connected: never a second body

    return receive


async def _send_json(send, status: int, payload: dict, headers: dict) -> None:
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.encode(), v.encode()) for k, v in headers.items())]
    if status in (408, 413):  # the body was not (all) read: the connection cannot be reused
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
