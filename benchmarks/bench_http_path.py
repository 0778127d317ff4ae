"""What each part of the service's HTTP path costs in CPU per /predict request (issue 22 item 3's overhead).

The service's own ASGI app (`Detector.to_asgi()`, BentoML's middlewares and typed multipart endpoint, our
admission control) runs in this process on uvloop, as a `bentoml serve` worker runs it (BentoML's server logging,
Prometheus in multiprocess mode), without uvicorn or a socket. The model call is replaced by its first answer,
so only the HTTP path costs CPU. Parts are switched off at run time, one at a time, in interleaved blocks of
requests (every configuration sees the same machine load); each part's cost is the paired median of
(full stack - stack without it) over the blocks, with its interquartile range.

    .venv/bin/python benchmarks/bench_http_path.py                 # ~2 min
    .venv/bin/python benchmarks/bench_http_path.py --blocks 40 --per-block 50

Parts: access = BentoML's access-log middleware for /predict; log_line = only the line it writes; metrics =
BentoML's request metrics middleware; otel = the OpenTelemetry middleware (/predict is excluded from tracing
unless trace_predict); timeout = the request-timeout middleware (cvpipe's leak-free version); admission =
cvpipe's AdmissionControl (body buffered, budgets, slot); temp_file = BentoML writing the multipart file part
to a temp file for the `Path` argument (and our read of it back). Benchmark only: it patches classes of
BentoML and cvpipe in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]
from bench_slow_clients import pack  # noqa: E402
from lean_http import multipart_request  # noqa: E402

PARTS = ("access", "log_line", "metrics", "otel", "timeout", "admission", "temp_file")
OFF: set[str] = set()  # the parts switched off for the block running now


def install_switches(image_copy: Path) -> list:
    """Patch each part so that it passes through while its name is in OFF; returns the access-log middlewares
    with their own skip_paths (they are switched through skip_paths). Must run before the service module is
    imported (BentoML builds the input model's validator, which holds FileSchema.decode, when the service class
    is declared)."""
    from _bentoml_sdk import validators
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    decode = validators.FileSchema.decode

    def decode_switch(self, obj):
        if "temp_file" in OFF:
            obj.file.read()  # what BentoML reads from the part, without writing it out
            return image_copy
        return decode(self, obj)

    validators.FileSchema.decode = decode_switch
    for cls, name in ((RunnerTrafficMetricsMiddleware, "metrics"), (OpenTelemetryMiddleware, "otel")):
        _switch_call(cls, name)
    access_logs: list = []
    init = AccessLogMiddleware.__init__

    def init_and_keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        access_logs.append((self, self.skip_paths))

    AccessLogMiddleware.__init__ = init_and_keep

    class LineSwitch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "log_line" not in OFF

    logging.getLogger("bentoml.access").addFilter(LineSwitch())
    return access_logs


def install_late_switches() -> None:
    """Parts whose classes cvpipe patches or defines when the service is imported."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from cvpipe.serving.admission import AdmissionControl
    from cvpipe.serving.engine import DetectorEngine

    _switch_call(TimeoutMiddleware, "timeout")
    _switch_call(AdmissionControl, "admission")
    real = DetectorEngine.predict_timed

    async def first_answer(self, data: bytes, score_thr: float | None = None):
        if not hasattr(self, "_bench_answer"):
            self._bench_answer = await real(self, data, score_thr)
        out, cpu_ms = self._bench_answer
        return {**out, "detections": list(out["detections"])}, cpu_ms

    DetectorEngine.predict_timed = first_answer


def _switch_call(cls: type, name: str) -> None:
    call = cls.__call__

    def switched(self, scope, receive, send):
        return self.app(scope, receive, send) if name in OFF else call(self, scope, receive, send)

    cls.__call__ = switched


class Client:
    """One multipart POST /predict, fed to the app as uvicorn feeds it (64 KB body messages)."""

    def __init__(self, app, image: bytes):
        head, _, self.body = multipart_request("/predict", "image", "image.jpg", image).partition(b"\r\n\r\n")
        self.headers = [(k.lower(), v) for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n")[1:])]
        self.app, self.statuses = app, []

    async def request(self) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "server": ("127.0.0.1", 3000), "client": ("127.0.0.1", 50000), "scheme": "http",
                 "method": "POST", "root_path": "", "path": "/predict", "raw_path": b"/predict",
                 "query_string": b"", "headers": self.headers, "state": {}}
        chunks = [self.body[i:i + 65536] for i in range(0, len(self.body), 65536)]

        async def receive() -> dict:
            if not chunks:
                await asyncio.Event().wait()  # a client that stays connected
            return {"type": "http.request", "body": chunks.pop(0), "more_body": len(chunks) > 0}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])

        await self.app(scope, receive, send)


async def measure(image: bytes, blocks: int, per_block: int, access_logs: list) -> dict[str, list[float]]:
    from cvpipe.serving.service import Detector

    app = Detector.to_asgi(is_main=True)
    lifespan_in: asyncio.Queue = asyncio.Queue()
    lifespan_out: asyncio.Queue = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                       lifespan_in.get, lifespan_out.put))
    started = await lifespan_out.get()
    assert started["type"] == "lifespan.startup.complete", started
    client = Client(app, image)
    for _ in range(100):  # warm-up; the first request runs the model once
        await client.request()
    configs = {"full": set(), **{f"-{p}": {p} for p in PARTS}}
    cpu_ms: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(blocks):
        for name, off in configs.items():
            OFF.clear()
            OFF.update(off)
            for middleware, skip_paths in access_logs:
                middleware.skip_paths = ["/predict"] if "access" in OFF else skip_paths
            client.statuses.clear()
            t0 = time.thread_time()
            for _ in range(per_block):
                await client.request()
            cpu_ms[name].append(1000 * (time.thread_time() - t0) / per_block)
            assert client.statuses == [200] * per_block, client.statuses[:5]
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await lifespan
    return cpu_ms


def report(cpu_ms: dict[str, list[float]]) -> None:
    full = cpu_ms["full"]
    print(f"full stack: median {statistics.median(full):.3f} ms CPU per request "
          f"(blocks {min(full):.3f}-{max(full):.3f}); load average {os.getloadavg()[0]:.1f}")
    for name, values in cpu_ms.items():
        if name == "full":
            continue
        cost = [f - v for f, v in zip(full, values)]
        q1, _, q3 = statistics.quantiles(cost, n=4)
        print(f"  {name[1:]:<10} costs {statistics.median(cost):+.3f} ms/request (IQR {q1:+.3f} .. {q3:+.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--per-block", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        model_dir, _ = pack(Path(tmp))
        from cvpipe.inference.packed import PackedModel

        test_image = PackedModel.load(model_dir).test_image
        assert test_image is not None
        image_copy = Path(tmp) / "image.jpg"
        image_copy.write_bytes(test_image.read_bytes())
        os.environ.update(CVPIPE_MODEL_DIR=str(model_dir), BENTOML_DO_NOT_TRACK="true",
                          PROMETHEUS_MULTIPROC_DIR=str(Path(tmp) / "prometheus"))
        (Path(tmp) / "prometheus").mkdir()
        access_logs = install_switches(image_copy)
        from bentoml._internal.log import configure_server_logging

        configure_server_logging()
        server_log = open(Path(tmp) / "server.log", "a")  # a worker's output goes to a file, not a terminal
        for handler in logging.getLogger("bentoml").handlers + logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(server_log)
        import cvpipe.serving.service  # noqa: F401 - applies cvpipe's BentoML fixes before the late switches
        install_late_switches()
        import uvloop

        cpu_ms = uvloop.run(measure(image_copy.read_bytes(), args.blocks, args.per_block, access_logs))
    report(cpu_ms)


if __name__ == "__main__":
    main()
