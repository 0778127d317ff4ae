"""A load client that costs next to nothing: keep-alive HTTP/1.1 over plain sockets, one pre-encoded request.

Why a benchmark needs its own: on a 2-core machine the client shares the cores with the service it measures.
httpx spends about 1 ms of Python per multipart request (encoding, response parsing, asyncio); charged to the
service, that is 10 % of a 10 ms model. This client sends the same bytes every time and reads the status line,
the headers and a Content-Length or chunked body; per request it costs tens of microseconds (what wrk or hey
would cost, without installing them). Benchmarks only: it trusts the server (loopback, our own service).
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from cvpipe.loadtest.stats import latency_stats


def multipart_request(path: str, field: str, filename: str, data: bytes, content_type: str = "image/jpeg") -> bytes:
    """The raw bytes of POST `path` with one multipart file field (what `curl -F field=@file` sends)."""
    boundary = b"cvpipe-bench-4f1d2c"
    body = b"".join([b"--", boundary, b'\r\nContent-Disposition: form-data; name="', field.encode(),
                     b'"; filename="', filename.encode(), b'"\r\nContent-Type: ', content_type.encode(),
                     b"\r\n\r\n", data, b"\r\n--", boundary, b"--\r\n"])
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary.decode()}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class KeepAliveConnection:
    def __init__(self, url: str, timeout_s: float = 30.0):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> tuple[int, bytes]:
        """(status, body) of one request on this connection."""
        self.sock.sendall(raw)
        head = self._read_until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if b"content-length" in headers:
            return status, self._read_exactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            return status, self._read_chunked()
        raise ConnectionError("response without Content-Length or chunked body")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        out, _, self.buf = self.buf.partition(marker)
        return out

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self._read_until(b"\r\n").split(b";")[0], 16)
            parts.append(self._read_exactly(size))
            self._read_exactly(2)
            if size == 0:
                return b"".join(parts)

    def close(self) -> None:
        self.sock.close()


def run_lean(url: str, raw: bytes, concurrency: int, seconds: float, max_requests: int) -> dict:
    """`concurrency` threads, each on its own keep-alive connection, send `raw` until the time or request budget
    is spent; latency_stats over the responses (errors: non-200 or a broken connection, reconnected)."""
    lock, lat, errors, started = threading.Lock(), [], [0], [0]
    deadline = time.perf_counter() + seconds

    def client() -> None:
        conn = KeepAliveConnection(url)
        while True:
            with lock:
                if started[0] >= max_requests or time.perf_counter() >= deadline:
                    break
                started[0] += 1
            t = time.perf_counter()
            try:
                status, _ = conn.request(raw)
            except (OSError, ValueError, IndexError):
                status = 0
                conn.close()
                conn = KeepAliveConnection(url)
            with lock:
                lat.append(time.perf_counter() - t)
                errors[0] += status != 200
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latency_stats(lat, time.perf_counter() - t0, errors[0])
