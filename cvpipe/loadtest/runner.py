"""Drive an HTTP endpoint with sequential or concurrent clients (asyncio + httpx), bounded by time and by a
maximum number of requests, over loopback only (this is a test of a local service, not a load generator
for other hosts)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from cvpipe.loadtest.stats import latency_stats


@dataclass
class RequestSpec:
    """What every request of a phase sends."""

    path: str = "/predict"
    method: str = "POST"
    content: bytes | None = None
    files: dict | None = None  # httpx multipart, e.g. {"image": ("test.jpg", data, "image/jpeg")}
    data: dict | None = None
    headers: dict | None = None

    def kwargs(self) -> dict:
        kw = {k: v for k, v in (("content", self.content), ("files", self.files), ("data", self.data),
                                ("headers", self.headers)) if v is not None}
        return kw


@dataclass
class Sample:
    start_s: float  # since the phase started
    latency_s: float
    status: int  # 0 when no response came
    error: str | None = None


@dataclass
class PhaseResult:
    name: str
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.error]

    def stats(self) -> dict:
        st = latency_stats([s.latency_s for s in self.samples], self.wall_s, len(self.errors))
        return {"phase": self.name, "concurrency": self.concurrency, **st}


# check(response) -> None if the response is right, else what is wrong with it
ResponseCheck = Callable[[httpx.Response], "str | None"]


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load tests run against loopback services only (127.0.0.1, ::1, localhost), not {url!r}")


async def _phase(base_url: str, req: RequestSpec, name: str, concurrency: int, duration_s: float,
                 max_requests: int, timeout_s: float, check: ResponseCheck | None) -> PhaseResult:
    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise ValueError("concurrency and max_requests must be >= 1 and duration_s > 0")
    started = 0
    result = PhaseResult(name, concurrency, 0.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        deadline = t0 + duration_s

        async def worker() -> None:
            nonlocal started
            # a request is started only while both bounds allow it; one in flight at the deadline finishes
            while started < max_requests and time.perf_counter() < deadline:
                started += 1
                s = time.perf_counter()
                status, error = 0, None
                try:
                    resp = await client.request(req.method, req.path, **req.kwargs())
                    latency = time.perf_counter() - s  # the check's own time is not the service's
                    status = resp.status_code
                    if status >= 400:
                        error = f"HTTP {status}: {resp.text[:200]}"
                    elif check is not None:
                        try:
                            error = check(resp)
                        except Exception as e:  # e.g. a body that is not the JSON expected
                            error = f"check failed: {type(e).__name__}: {e}"
                except httpx.HTTPError as e:
                    latency = time.perf_counter() - s
                    error = f"{type(e).__name__}: {e}"
                result.samples.append(Sample(s - t0, latency, status, error))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - t0
    result.samples.sort(key=lambda x: x.start_s)
    return result


def run_phase(base_url: str, req: RequestSpec, *, name: str = "phase", concurrency: int = 1, duration_s: float = 5.0,
              max_requests: int = 1000, timeout_s: float = 30.0, check: ResponseCheck | None = None) -> PhaseResult:
    """One phase: `concurrency` clients send `req` until `duration_s` passed or `max_requests` were started."""
    require_loopback(base_url)
    return asyncio.run(_phase(base_url, req, name, concurrency, duration_s, max_requests, timeout_s, check))


def run_load_test(base_url: str, req: RequestSpec, *, duration_s: float = 10.0, concurrency: int = 4,
                  max_requests: int = 2000, timeout_s: float = 30.0, warmup_requests: int = 2,
                  check: ResponseCheck | None = None) -> list[PhaseResult]:
    """Warm-up (not counted), then phase 1 sequential and phase 2 with `concurrency` clients, each bounded by
    `duration_s` and `max_requests`."""
    require_loopback(base_url)
    if warmup_requests:
        run_phase(base_url, req, name="warmup", concurrency=1, duration_s=max(duration_s, timeout_s),
                  max_requests=warmup_requests, timeout_s=timeout_s, check=check)
    seq = run_phase(base_url, req, name="sequential", concurrency=1, duration_s=duration_s,
                    max_requests=max_requests, timeout_s=timeout_s, check=check)
    conc = run_phase(base_url, req, name="concurrent", concurrency=concurrency, duration_s=duration_s,
                     max_requests=max_requests, timeout_s=timeout_s, check=check)
    return [seq, conc]
