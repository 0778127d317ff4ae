"""The load tester against a tiny local HTTP server whose latencies and failures are known."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from cvpipe.loadtest.report import plot_latency, stats_table
from cvpipe.loadtest.runner import RequestSpec, require_loopback, run_load_test, run_phase
from cvpipe.loadtest.stats import latency_stats
from cvpipe.serving.process import free_port


class Counters:
    in_flight = 0
    max_in_flight = 0
    calls = 0


async def slow(request: Request):
    c = request.app.state.counters
    c.calls += 1
    c.in_flight += 1
    c.max_in_flight = max(c.max_in_flight, c.in_flight)
    try:
        body = await request.body()
        await asyncio.sleep(float(request.query_params.get("ms", "20")) / 1000)
        return JSONResponse({"bytes": len(body)})
    finally:
        c.in_flight -= 1


async def flaky(request: Request):
    c = request.app.state.counters
    c.calls += 1
    if c.calls % 3 == 0:
        return PlainTextResponse("boom", status_code=500)
    return JSONResponse({"ok": True})


@contextmanager
def serve_in_thread(app, start_timeout_s: float = 10.0):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        assert time.time() - t0 < start_timeout_s, "test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(5)


@pytest.fixture(scope="module")
def server():
    app = Starlette(routes=[Route("/slow", slow, methods=["POST"]), Route("/flaky", flaky, methods=["POST"])])
    app.state.counters = Counters()
    with serve_in_thread(app) as url:
        yield url, app.state.counters


@pytest.fixture
def counters(server):
    c = server[1]
    c.calls = c.in_flight = c.max_in_flight = 0
    return c


def test_statistics_match_the_definitions():
    lat = np.random.default_rng(0).gamma(2.0, 0.01, size=257)
    st = latency_stats(lat, wall_s=2.0, errors=3)
    ms = sorted(lat * 1000)
    # statistics.quantiles' "inclusive" method is the same linear interpolation, computed independently
    q = statistics.quantiles(ms, n=100, method="inclusive")
    for p in (50, 90, 95, 99):
        assert st[f"p{p}_ms"] == pytest.approx(q[p - 1], rel=1e-9)
    assert st["max_ms"] == pytest.approx(ms[-1]) and st["mean_ms"] == pytest.approx(statistics.fmean(ms))
    assert st["requests"] == 257 and st["errors"] == 3 and st["error_rate"] == pytest.approx(3 / 257)
    assert st["throughput_rps"] == pytest.approx(128.5) and st["ok_rps"] == pytest.approx(127.0)
    empty = latency_stats([], 1.0)
    assert empty["requests"] == 0 and empty["p95_ms"] is None


def test_sequential_phase_is_bounded_by_max_requests(server, counters):
    url, _ = server
    ph = run_phase(url, RequestSpec("/slow?ms=20", content=b"x" * 100), name="seq", concurrency=1, duration_s=30,
                   max_requests=12)
    st = ph.stats()
    assert st["requests"] == 12 == counters.calls and st["errors"] == 0
    assert counters.max_in_flight == 1
    assert min(s.latency_s for s in ph.samples) >= 0.02  # the server sleeps 20 ms
    assert st["throughput_rps"] <= 50  # one at a time, 20 ms each: an upper bound that load cannot break
    assert [s.start_s for s in ph.samples] == sorted(s.start_s for s in ph.samples)


def test_concurrent_phase_is_bounded_by_time_and_overlaps(server, counters):
    url, _ = server
    ph = run_phase(url, RequestSpec("/slow?ms=50"), name="conc", concurrency=4, duration_s=0.6, max_requests=10_000)
    st = ph.stats()
    assert st["wall_s"] >= 0.6 and max(s.start_s for s in ph.samples) < 0.6  # none started after the deadline
    assert counters.max_in_flight == 4
    one = run_phase(url, RequestSpec("/slow?ms=50"), name="seq", concurrency=1, duration_s=0.6,
                    max_requests=10_000).stats()
    # 4 clients on a 50 ms sleep do about 4x one client's requests (measured 3.3x and 3.9x under load); a ratio in
    # the same test, so a busy machine slows both alike
    print(f"4 clients {st['throughput_rps']:.1f} req/s, 1 client {one['throughput_rps']:.1f} req/s")
    assert st["throughput_rps"] > 2 * one["throughput_rps"], (st["throughput_rps"], one["throughput_rps"])
    assert st["errors"] == 0 and st["p50_ms"] >= 50


def test_errors_and_checks_are_counted(server, counters):
    url, _ = server
    ph = run_phase(url, RequestSpec("/flaky"), concurrency=1, duration_s=30, max_requests=9)
    assert ph.stats()["errors"] == 3 and ph.stats()["error_rate"] == pytest.approx(1 / 3)
    assert all("HTTP 500" in s.error for s in ph.errors)
    ph = run_phase(url, RequestSpec("/slow?ms=1"), concurrency=2, duration_s=30, max_requests=6,
                   check=lambda r: None if r.json().get("bytes") == 3 else "wrong body size")
    assert ph.stats()["errors"] == 6 and ph.errors[0].error == "wrong body size"
    ph = run_phase(url, RequestSpec("/flaky"), concurrency=1, duration_s=30, max_requests=2,
                   check=lambda r: r.json()["missing"])  # a check that raises is an error, not a crash
    assert ph.stats()["errors"] == 2 and "KeyError" in ph.errors[0].error


def test_unreachable_service_gives_errors_not_exceptions():
    ph = run_phase(f"http://127.0.0.1:{free_port()}", RequestSpec("/x"), duration_s=5, max_requests=3, timeout_s=2)
    assert ph.stats()["errors"] == 3 and all(s.status == 0 for s in ph.samples)


def test_only_loopback():
    require_loopback("http://127.0.0.1:3000")
    require_loopback("http://localhost:3000/x")
    require_loopback("http://[::1]:3000")
    for bad in ("http://example.com", "http://10.0.0.1:3000", "http://0.0.0.0:3000"):
        with pytest.raises(ValueError, match="loopback"):
            run_phase(bad, RequestSpec("/x"), max_requests=1)


def test_load_test_phases_and_report(server, counters, tmp_path):
    url, _ = server
    phases = run_load_test(url, RequestSpec("/slow?ms=5"), duration_s=0.3, concurrency=3, max_requests=20,
                           warmup_requests=2)
    assert [p.name for p in phases] == ["sequential", "concurrent"]
    assert phases[1].concurrency == 3
    n = sum(p.stats()["requests"] for p in phases)
    assert counters.calls == n + 2  # warm-up requests are sent but not counted
    png = plot_latency(phases, tmp_path / "latency.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    html = stats_table(phases)
    assert "sequential" in html and "concurrent" in html and "p95_ms" in html
