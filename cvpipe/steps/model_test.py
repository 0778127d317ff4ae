"""model_test: start the packed BentoML service, check it over REST, load-test it, report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx

from cvpipe.export.pack import Bento
from cvpipe.inference.packed import PackedModel
from cvpipe.loadtest.checks import (
    Check,
    check_service,
    find_test_image,
    image_part,
    match_detections,
    reference_detections,
)
from cvpipe.loadtest.report import plot_latency, stats_table
from cvpipe.loadtest.runner import RequestSpec, require_loopback, run_load_test
from cvpipe.pipeline import Decision, Folder, Output, Produced, StepContext, StepParams, step
from cvpipe.reporting.html import Report, escape, image, table

log = logging.getLogger(__name__)


class ModelTestParams(StepParams):
    host: str = "127.0.0.1"  # loopback only (127.0.0.1, ::1, localhost): this is a test, not a deployment
    ready_timeout_s: float = 180.0
    request_timeout_s: float = 30.0
    min_iou: float = 0.99  # predict vs the packed reference
    score_tol: float = 1e-3
    duration_s: float = 10.0  # per load-test phase
    concurrency: int = 4
    max_requests: int = 2000  # per phase
    warmup_requests: int = 3
    max_error_rate: float = 0.0
    max_p95_ms: float | None = None  # applies to every phase


class ModelTestFailed(RuntimeError):
    pass


def load_checks(phases, max_error_rate: float, max_p95_ms: float | None) -> list[Check]:
    checks = []
    for ph in phases:
        st = ph.stats()
        checks.append(Check(f"load test {ph.name}: error rate <= {max_error_rate:g}",
                            st["requests"] > 0 and st["error_rate"] <= max_error_rate,
                            f"{st['errors']} errors in {st['requests']} requests"
                            + (f"; first: {ph.errors[0].error}" if ph.errors else "")))
        if max_p95_ms is not None:
            checks.append(Check(f"load test {ph.name}: p95 <= {max_p95_ms:g} ms",
                                st["p95_ms"] is not None and st["p95_ms"] <= max_p95_ms, f"p95 {st['p95_ms']} ms"))
    return checks


def write_report(out: Path, result: dict, phases, latency_png: Path | None) -> None:
    (out / "report.json").write_text(json.dumps(result, indent=2))
    verdict = "<p class='good'>all checks passed</p>" if result["passed"] else "<p class='bad'>FAILED</p>"
    rep = Report(f"Model service test — model run {result.get('model_run_id') or '?'}")
    rep.add("Result", verdict, table([{"check": c["name"], "passed": "yes" if c["passed"] else "NO",
                                       "detail": c["detail"]} for c in result["checks"]]))
    if result.get("error"):
        rep.add("Error", f"<pre>{escape(result['error'])}</pre>")
    rep.add("Service", table([{"key": k, "value": v} for k, v in result["service"].items()]))
    if phases:
        rep.add("Load test", "<p class='note'>POST /predict with the packed test image over loopback; phase 1 "
                "one client, phase 2 concurrent clients; each bounded by duration and request count.</p>",
                stats_table(phases), image(latency_png, "latency over time") if latency_png else "")
    rep.add("Parameters", table([{"param": k, "value": v} for k, v in result["params"].items()]))
    rep.write(out / "report.html")


@step("model_test", params=ModelTestParams, inputs={"bento": "model_pack.bento", "model": "model_pack.model"},
      outputs=[Output("report", Folder, description="report.html, report.json, latency.png")])
def model_test(params: ModelTestParams, ctx: StepContext, *, bento: Bento, model: PackedModel) -> Produced:
    """Serve the packed .bento, check its REST API against the packed reference, load-test it."""
    require_loopback(f"http://[{params.host}]" if ":" in params.host else f"http://{params.host}")
    out = ctx.workdir("report")
    result: dict = {"passed": False, "model_run_id": None, "bento": None, "checks": [], "load_test": [],
                    "service": {}, "params": params.model_dump(mode="json")}
    phases, latency_png, error = [], None, None
    try:
        phases = serve_and_check(params, ctx, bento, model, result)
    except Exception as e:  # the report is written whatever happened; the step fails below
        error = f"{type(e).__name__}: {e}"
        log.error("model_test: %s", error)
    if phases:
        latency_png = plot_latency(phases, out / "latency.png")
    result["error"] = error
    result["passed"] = error is None and bool(result["checks"]) and all(c["passed"] for c in result["checks"])
    write_report(out, result, phases, latency_png)
    if not result["passed"]:
        fail_and_veto(ctx, result, error)
    conc = result["load_test"][1]
    return Produced({"checks": len(result["checks"]), "passed": True, "concurrent_rps": conc["throughput_rps"],
                     "p95_ms": conc["p95_ms"], "sequential_p50_ms": result["load_test"][0]["p50_ms"]},
                    report=Folder(out))


def serve_and_check(params: ModelTestParams, ctx: StepContext, bento: Bento, model: PackedModel,
                    result: dict) -> list:
    """Start the service from the .bento, run the REST checks and the load test; fill `result`; the phases."""
    from cvpipe.serving.process import ServiceProcess

    archive = bento.archive
    result["bento"] = archive.name
    run_id = result["model_run_id"] = model.run_id
    t0 = time.perf_counter()
    with ServiceProcess(archive, params.host, bentoml_home=ctx.scratch / "bentoml_home",
                        ready_timeout_s=params.ready_timeout_s) as svc:
        result["service"] = {"bento": archive.name, "url": svc.url, "startup_s": round(time.perf_counter() - t0, 2)}
        log.info("model_test: service up at %s after %.1f s", svc.url, time.perf_counter() - t0)
        with httpx.Client(base_url=svc.url, timeout=params.request_timeout_s) as client:
            checks, reference = check_service(client, model, run_id, params.min_iou, params.score_tol)
        result["checks"] += [c.to_dict() for c in checks]
        ref_dets = reference_detections(reference)
        test_image = find_test_image(model)

        def same_as_reference(resp: httpx.Response) -> str | None:
            ok, detail = match_detections(reference_detections(resp.json()), ref_dets, params.min_iou,
                                          params.score_tol)
            return None if ok else f"mismatch: {detail}"

        request = RequestSpec("/predict", files=image_part(test_image, test_image.read_bytes()))
        phases = run_load_test(svc.url, request, duration_s=params.duration_s, concurrency=params.concurrency,
                               max_requests=params.max_requests, timeout_s=params.request_timeout_s,
                               warmup_requests=params.warmup_requests, check=same_as_reference)
        result["load_test"] = [p.stats() for p in phases]
        result["checks"] += [c.to_dict() for c in load_checks(phases, params.max_error_rate, params.max_p95_ms)]
        alive = client_alive(svc.url)
        result["checks"].append(Check("service still up after the load test", alive, "GET /readyz").to_dict())
    return phases


def fail_and_veto(ctx: StepContext, result: dict, error: str | None) -> None:
    """A failed service test vetoes the model (demoted if champion), then fails the step."""
    failed = [c["name"] for c in result["checks"] if not c["passed"]]
    veto(ctx, f"model_test failed: {', '.join(failed) or error}")
    raise ModelTestFailed(f"model_test failed ({error or ''}{'; ' if error and failed else ''}"
                          f"{'failed checks: ' + '; '.join(failed) if failed else ''}); details in the "
                          f"run's report (report.html, report.json)")


def veto(ctx: StepContext, reason: str) -> None:
    """A failed service test demotes the model when it is champion, else records the refusal."""
    model_run = ctx.input_runs.get("model")
    if model_run is None:
        log.warning("model_test: no model_pack run behind the model; if it is champion, roll back: cvpipe rollback")
        return
    done = ctx.decide(Decision(model_run, passed=False, promote_on_pass=False, reason=reason[:500]))
    log.info("model_test: veto %s", done)


def client_alive(url: str) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False
