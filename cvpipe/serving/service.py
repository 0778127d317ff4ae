"""The BentoML 1.4 service of a packed cvpipe model: typed `@bentoml.api` endpoints, all in the OpenAPI
document (`/docs.json`, UI at `/`) and callable with `bentoml.SyncHTTPClient(url).predict(image=Path(...))`.

    POST /predict      image (multipart file field `image`; or the raw image bytes as the body with any other
                       Content-Type), score_thr (form field or query, 0..1) -> Prediction
    POST /test_data    the packed test image          (GET works too, for these three)
    POST /test_result  the packed reference prediction on it
    POST /info         model, run id, classes, thresholds, limits; live/rollback status of model updates
    POST /admin/reload {"run_id": "latest" | RUN_ID, "accept_risk": false}, Bearer token; 404 unless
                       admin_token is set; 409 while a release runs
    POST /admin/release {"action": "start" | "status" | "promote" | "abort", "run_id", "plan", "reason"},
                       Bearer token: a shadow or canary release (cvpipe.serving.release)
    BentoML's /readyz, /livez, /metrics (with cvpipe_answers_total and cvpipe_model_latency_seconds per model).

Every /predict answer names its model: `model.run_id` in the body, the X-Cvpipe-Model and X-Cvpipe-Model-Role
(champion | challenger) headers.

Each worker builds its engine in `Detector.__init__` from ServiceSettings (CVPIPE_* variables or
CVPIPE_SETTINGS_FILE): the model is the BentoML model named by the bento argument `model_tag` (set at build
time), or CVPIPE_MODEL_TAG, or the packed dir CVPIPE_MODEL_DIR (in-process use without a Bento:
`Detector.to_asgi()`). cvpipe.serving.admission decides which requests get in; BentoML parses the multipart
form; a refusal is `RequestRefused`, answered `{"error": ...}` with its 4xx (cvpipe.serving.errors).
Imports only bentoml, starlette, pydantic, numpy, pillow, opencv, onnxruntime, fsspec and yaml (no torch).
"""

from __future__ import annotations

import hmac
import mimetypes
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cvpipe.serving.admission import AdmissionControl
from cvpipe.serving.bentoml_fixes import apply_fixes
from cvpipe.serving.engine import DecodeBudget, DetectorEngine, limit_heap_growth
from cvpipe.serving.errors import RequestRefused, error_body
from cvpipe.serving.mirror import process_mirrors
from cvpipe.serving.process import die_with_parent
from cvpipe.serving.release import ReleaseController, ReleaseRefused, release_needs_one_worker
from cvpipe.serving.release_rules import ReleasePlan
from cvpipe.serving.settings import ServiceSettings
from cvpipe.serving.swap import ModelManager, StoreSource

apply_fixes()  # BentoML 1.4: a leaked timer per request, error bodies, URL fetching (cvpipe/serving/bentoml_fixes.py)
DEPLOYMENT = ServiceSettings.load()  # what BentoML needs when the class is declared: workers, timeout, model tag
MODEL_TAG = DEPLOYMENT.model_tag or getattr(bentoml.use_arguments(), "model_tag", None) or "cvpipe-detector:latest"
_update_counters: dict[str, Any] = {}  # one Prometheus metric of each per process, however many services it makes


class Detection(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in the original image's pixels")
    score: float
    category_id: int = Field(description="the dataset's category id (e.g. COCO's)")
    category_name: str


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    run_id: str | None = Field(description="model_pack run that answered (during a canary release: the champion's "
                                           "or the challenger's; the X-Cvpipe-Model-Role header says which)")


class Prediction(BaseModel):
    detections: list[Detection] = Field(description="highest score first")
    image: ImageSize
    model: ModelRef


def prediction_of(out: dict) -> Prediction:
    """The engine's answer as the response model, not validated again: it is built by our own code, and
    validating it took ~10 % of the worker's own cost per request (py-spy); BentoML serialises it once."""
    return Prediction.model_construct(detections=[Detection.model_construct(**d) for d in out["detections"]],
                                      image=ImageSize.model_construct(**out["image"]),
                                      model=ModelRef.model_construct(**out["model"]))


async def predict_raw_body(request: Request) -> Response:
    """/predict with the image as the whole body (the admission control routes non-multipart bodies here)."""
    detector = bentoml.get_current_service()
    try:
        query_thr = request.query_params.get("score_thr")
        key = request.headers.get(detector.settings.release_key_header)
        out, role = await detector.releases.predict(await request.body(), parse_score_thr(query_thr), key)
    except RequestRefused as e:
        return Response(error_body(e), e.status, e.headers, media_type="application/json")
    return JSONResponse(out, headers=model_headers(out["model"]["run_id"], role))


def model_headers(run_id: str | None, role: str) -> dict[str, str]:
    return {"x-cvpipe-model": str(run_id), "x-cvpipe-model-role": role}


def parse_score_thr(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        v = float(value)
    except ValueError:
        raise RequestRefused(400, f"score_thr must be a number between 0 and 1, got {value[:40]!r}") from None
    if not 0.0 <= v <= 1.0:  # NaN fails this too
        raise RequestRefused(400, f"score_thr must be between 0 and 1, got {v}")
    return v


@bentoml.service(name="cvpipe_detector", workers=DEPLOYMENT.workers,
                 traffic={"timeout": DEPLOYMENT.request_timeout_s},  # concurrency: per worker, in the admission
                 tracing={"excluded_urls": None if DEPLOYMENT.trace_predict else "predict"})
@bentoml.asgi_app(Starlette(routes=[Route("/raw", predict_raw_body, methods=["POST"])]), path="/predict")
class Detector:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.settings = s = ServiceSettings.load()
        limit_heap_growth()
        if s.model_dir is None:  # a `bentoml serve` worker: it ends with the server that started it, even on SIGKILL
            die_with_parent(signal.SIGTERM)
        budget = DecodeBudget(s.decode_budget_bytes, s.queue_timeout_s)  # one per worker, shared across swaps
        source = StoreSource(s.follow_store, s.store_env, s.store_pipeline) if s.follow_store else None
        self.manager = ModelManager(DetectorEngine(s.model_dir or self.model.path, s, budget),
                                    lambda path: DetectorEngine(path, s, budget), source, s.min_live_recall)
        self.manager.on_event = _update_counter()
        self.releases = ReleaseController(self.manager, process_mirrors(s), on_answer=_answer_metrics())
        if source is not None and s.follow:
            self.manager.follow(s.follow_interval_s)

    @property
    def engine(self) -> DetectorEngine:
        return self.manager.engine  # read once per request: a swap replaces it whole

    async def detect(self, image: bytes, score_thr: float | None, key: str | None = None) -> tuple[Prediction, str]:
        """The prediction and the role (champion | challenger) of the model that made it."""
        out, role = await self.releases.predict(image, score_thr, key)
        return prediction_of(out), role

    @bentoml.api(route="/predict")
    async def predict(
        self,
        ctx: bentoml.Context,
        image: Annotated[Path, Field(description="JPEG, PNG, BMP, WebP, TIFF, ... as the multipart file field "
                                                 "`image`, or the raw bytes as the body (any other Content-Type)")],
        score_thr: float | None = Field(None, ge=0.0, le=1.0, description="score threshold 0..1 (default: "
                                           "the model's); a query parameter works too"),
    ) -> Prediction:
        """Detect objects; boxes in the original image's pixels, COCO category ids. Bad input: 4xx {"error"}."""
        if score_thr is None:
            score_thr = parse_score_thr(ctx.request.query_params.get("score_thr"))
        prediction, role = await self.detect(image.read_bytes(), score_thr,
                                             ctx.request.headers.get(self.settings.release_key_header))
        for name, value in model_headers(prediction.model.run_id, role).items():
            ctx.response.headers[name] = value
        return prediction

    @bentoml.api(route="/test_data")
    def test_data(self) -> Path:
        """The packed test image (its own content type)."""
        if self.engine.test_image is None:
            raise RequestRefused(404, "this model was packed without a test image")
        return self.engine.test_image

    @bentoml.api(route="/test_result")
    def test_result(self) -> dict:
        """The packed reference prediction on the test image (reference.json)."""
        if self.engine.reference is None:
            raise RequestRefused(404, "this model was packed without a reference prediction")
        return self.engine.reference

    @bentoml.api(route="/info")
    def info(self, ctx: bentoml.Context) -> dict:
        """Model name, version (= run id), classes, input size, thresholds, metrics, limits, update status
        (counts for anyone; the text of update errors only with the admin token)."""
        out = self.engine.info()
        out.update(self.manager.info(private=self._authorised(ctx)))
        rel = self.releases.release
        out["release"] = {"mode": rel.plan.mode, "share": rel.plan.share, "challenger": rel.challenger.run_id} \
            if rel else None
        out["limits"]["upload_budget_bytes"] = self.settings.upload_budget_bytes
        return out

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context, run_id: str = "latest", accept_risk: bool = False) -> dict:
        """Load, check and swap to a model_pack run ("latest" or a run id): Bearer token; 404 when disabled.
        accept_risk: swap although the model disagrees with the live model on the live test image."""
        self._admin(ctx)
        if self.manager.source is None:
            raise RequestRefused(409, "no model store configured (set CVPIPE_FOLLOW_STORE)")
        if self.releases.release is not None:
            raise RequestRefused(409, f"a release of {self.releases.release.challenger.run_id} is in progress: "
                                      f"`cvpipe release promote` or `cvpipe release abort` it first")
        import anyio

        result = await anyio.to_thread.run_sync(self.manager.load, str(run_id), bool(accept_risk))
        if result["error"] is not None:
            raise RequestRefused(422, result["error"], details=result)
        self.manager.pinned = run_id != "latest"
        return result

    @bentoml.api(route="/admin/release")
    async def admin_release(self, ctx: bentoml.Context, action: str = "status", run_id: str | None = None,
                            plan: dict | None = None, reason: str = "") -> dict:
        """Shadow/canary releases (Bearer token): start {run_id, plan}, status, promote, abort."""
        self._admin(ctx)
        import anyio

        if action == "status":
            return self.releases.status()
        try:
            if action == "start":
                if self.settings.workers > 1:
                    raise ReleaseRefused(409, release_needs_one_worker(self.settings.workers))
                if not run_id:
                    raise ReleaseRefused(422, "start needs a run_id")
                try:
                    checked = ReleasePlan.model_validate(plan or {})
                except ValidationError as e:
                    raise ReleaseRefused(422, "bad plan: " + "; ".join(
                        f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
                return await anyio.to_thread.run_sync(self.releases.start, run_id, checked, reason)
            if action == "promote":
                return await anyio.to_thread.run_sync(self.releases.promote, reason or "promoted by hand")
            if action == "abort":
                return await anyio.to_thread.run_sync(self.releases.abort, reason or "aborted by hand")
        except ReleaseRefused as e:
            raise RequestRefused(e.status, str(e), details={"live_run_id": self.manager.live_run_id}) from None
        raise RequestRefused(422, f"unknown action {action[:40]!r}: start, status, promote or abort")

    def _admin(self, ctx: bentoml.Context) -> None:
        if self.settings.admin_token is None:
            raise RequestRefused(404, "Not Found")
        if not self._authorised(ctx):
            raise RequestRefused(401, "missing or wrong admin token")

    def _authorised(self, ctx: bentoml.Context) -> bool:
        """A Bearer token equal to the admin token (constant-time); never true when no token is configured."""
        if self.settings.admin_token is None:
            return False
        auth = ctx.request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        return hmac.compare_digest(given.encode(), self.settings.admin_token.get_secret_value().encode())


def _update_counter() -> Callable[[str], None]:
    """`cvpipe_model_updates_total{event=swap|refusal|follow_error}` on /metrics. prometheus_client is imported
    here, in the worker, after BentoML has set up its multiprocess directory (else /metrics would not see it)."""
    import prometheus_client

    if "counter" not in _update_counters:
        _update_counters["counter"] = prometheus_client.Counter(
            "cvpipe_model_updates", "model updates of this worker: swaps, refused candidates, failed store polls",
            ["event"])
    counter = _update_counters["counter"]
    return lambda event: counter.labels(event=event).inc()


def _answer_metrics() -> Callable[[str, str, str, str, float], None]:
    """Per model: `cvpipe_answers_total{model, role, path, outcome}` and `cvpipe_model_latency_seconds{model,
    role, path}` (path: answer = on the request path, mirror = a release's off-path copy)."""
    import prometheus_client

    if "answers" not in _update_counters:
        _update_counters["answers"] = prometheus_client.Counter(
            "cvpipe_answers", "model calls by model run id, role, path and outcome",
            ["model", "role", "path", "outcome"])
        _update_counters["latency"] = prometheus_client.Histogram(
            "cvpipe_model_latency_seconds", "wall time of model calls by model run id, role and path",
            ["model", "role", "path"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
    answers, latency = _update_counters["answers"], _update_counters["latency"]

    def record(model: str, role: str, path: str, outcome: str, seconds: float) -> None:
        answers.labels(model=model, role=role, path=path, outcome=outcome).inc()
        if outcome == "ok":
            latency.labels(model=model, role=role, path=path).observe(seconds)
    return record


Detector.add_asgi_middleware(AdmissionControl)  # type: ignore[attr-defined]  # bentoml.service's Service type
mimetypes.add_type("image/webp", ".webp")
