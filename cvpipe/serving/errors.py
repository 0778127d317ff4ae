"""The one way the service refuses a request: raise `RequestRefused(status, message)`.

It is a BentoML exception (BentoML answers it with its status wherever it is raised); cvpipe.serving.bentoml_fixes
makes the body `{"error": message}` (BentoML 1.4 would send `[{"error": ...}]` and log a traceback for every bad
request). The admission control in front of the endpoints sends the same body itself (`error_body`).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from bentoml.exceptions import BentoMLException


class RequestRefused(BentoMLException):
    """A request the service refuses: a 4xx (or 503 when busy, with Retry-After) and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 details: dict | None = None):
        """`details`: more JSON fields beside "error" (e.g. the live run after a refused reload)."""
        super().__init__(message, error_code=HTTPStatus(status))
        self.status, self.details = status, dict(details or {})
        self.headers = dict(headers or {})
        if status == 503:
            self.headers.setdefault("retry-after", "1")


def error_body(e: RequestRefused) -> bytes:
    return json.dumps({"error": e.message, **e.details}).encode()
