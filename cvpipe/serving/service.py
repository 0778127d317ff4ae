"""The BentoML 1.4 service of a packed cvpipe model: typed `@bentoml.api` endpoints, all in the OpenAPI
document (`/docs.json`, UI at `/`) and callable with `bentoml.SyncHTTPClient(url).predict(image=Path(...))`.

    POST /predict      image (multipart field `image`, or the raw image bytes as the body with any Content-Type),
                       score_thr (form field or query, 0..1) -> Prediction
    POST /test_data    the packed test image          (GET works too, for these three)
    POST /test_result  the packed reference prediction on it
    POST /info         model, run id, classes, thresholds, limits; live/rollback status of model updates
    POST /admin/reload {"run_id": "latest" | RUN_ID}, Bearer token; 404 unless admin_token is set
    BentoML's /readyz, /livez, /metrics.

Settings: cvpipe.serving.settings.ServiceSettings (CVPIPE_* variables or CVPIPE_SETTINGS_FILE), read once
per worker. cvpipe.serving.guard sits in front of the endpoints (body deadline, size limits, per-worker
concurrency, input normalisation). The model artifacts are a BentoML model whose tag is the bento argument
`model_tag` (set at build time) unless CVPIPE_MODEL_TAG says otherwise.
Imports only bentoml, starlette, pydantic, numpy, pillow, opencv, onnxruntime, fsspec and yaml (no torch).
"""

from __future__ import annotations

import hmac
import logging
import mimetypes
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from cvpipe.serving.api import ClientError, DecodeBudget, DetectorEngine, limit_heap_growth
from cvpipe.serving.bentoml_fixes import fix_timeout_middleware
from cvpipe.serving.guard import RequestGuard
from cvpipe.serving.process import die_with_parent
from cvpipe.serving.settings import ServiceSettings
from cvpipe.serving.swap import ModelManager, StoreSource

log = logging.getLogger(__name__)

SETTINGS = ServiceSettings.load()
fix_timeout_middleware()  # BentoML keeps a 60 s timer per request alive: ~5 KB each (cvpipe/serving/bentoml_fixes.py)
MODEL_TAG = SETTINGS.model_tag or getattr(bentoml.use_arguments(), "model_tag", None) or "cvpipe-detector:latest"


class Detection(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in the original image's pixels")
    score: float
    category_id: int = Field(description="the dataset's category id (e.g. COCO's)")
    category_name: str


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    run_id: Optional[str] = Field(description="model_pack run that answered")


class Prediction(BaseModel):
    detections: list[Detection] = Field(description="highest score first")
    image: ImageSize
    model: ModelRef


@dataclass
class Hooks:
    """Where an instance of the service gets its engine, manager and settings."""
    get_engine: Callable[[], DetectorEngine]
    get_manager: Callable[[], Optional[ModelManager]]
    settings: ServiceSettings


_pending: list[Hooks] = []  # set by app_for() for in-process apps; empty in a real `bentoml serve` worker
_metrics: dict[str, object] = {}
_live: dict[str, Hooks] = {}  # the hooks of the running instance (what the guard reads)


def app_for(hooks: Hooks):
    """An in-process ASGI app of this service over the given hooks (cvpipe.serving.api.create_app)."""
    _pending.append(hooks)
    _live["hooks"] = hooks
    return Detector.to_asgi(is_main=True)


def _serving_hooks(model_path: str) -> Hooks:
    s = SETTINGS
    budget = DecodeBudget(s.decode_budget_bytes, s.queue_timeout_s)  # one per worker, shared across swaps
    source = StoreSource(s.follow_store, s.store_env, s.store_pipeline) if s.follow_store else None
    manager = ModelManager(DetectorEngine.from_settings(model_path, s, budget),
                           lambda path: DetectorEngine.from_settings(path, s, budget), source)
    manager.on_event = _update_counter()
    if source is not None and s.follow:
        manager.follow(s.follow_interval_s)
    return Hooks(lambda: manager.engine, lambda: manager, s)


def _update_counter() -> Callable[[str], None]:
    """`cvpipe_model_updates_total{event=swap|refusal|follow_error}` on /metrics. prometheus_client is imported
    here, in the worker, after BentoML has set up its multiprocess directory (else /metrics would not see it)."""
    import prometheus_client

    if "counter" not in _metrics:  # one registration per process
        _metrics["counter"] = prometheus_client.Counter(
            "cvpipe_model_updates", "model updates of this worker: swaps, refused candidates, failed store polls",
            ["event"])
    counter = _metrics["counter"]
    return lambda event: counter.labels(event=event).inc()


def _authorised(settings: ServiceSettings, request) -> bool:
    """A Bearer token equal to the admin token (constant-time); never true when no token is configured."""
    if settings.admin_token is None:
        return False
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    return hmac.compare_digest(given.encode(), settings.admin_token.get_secret_value().encode())


def _error(e: ClientError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status,
                        headers={"retry-after": "1"} if e.status == 503 else None)


@bentoml.service(name="cvpipe_detector", workers=SETTINGS.workers,
                 traffic={"timeout": SETTINGS.request_timeout_s})  # concurrency: per worker, in the guard
class Detector:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        limit_heap_growth()
        if not _pending:  # a real worker: it ends with the `bentoml serve` that started it, even on SIGKILL
            die_with_parent(signal.SIGTERM)
        self.hooks = _pending.pop() if _pending else _serving_hooks(self.model.path)
        _live["hooks"] = self.hooks

    @bentoml.api(route="/predict")
    async def predict(
        self,
        image: Annotated[Path, ContentType("image/*"), Field(description="JPEG, PNG, BMP, WebP, TIFF, ... as a "
                                                             "multipart field, or the raw bytes as the body")],
        score_thr: Optional[float] = Field(None, description="score threshold 0..1 (default: the model's); "
                                           "a query parameter works too"),
    ) -> Prediction:
        """Detect objects; boxes in the original image's pixels, COCO category ids. Bad input: 4xx {"error"}."""
        engine = self.hooks.get_engine()
        try:
            return Prediction.model_validate(await engine.predict(image.read_bytes(), score_thr))
        except ClientError as e:
            return _error(e)

    @bentoml.api(route="/test_data")
    def test_data(self) -> Annotated[Path, ContentType("image/jpeg")]:
        """The packed test image (its own content type)."""
        engine = self.hooks.get_engine()
        if engine.test_image is None:
            return _error(ClientError(404, "this model was packed without a test image"))
        return engine.test_image

    @bentoml.api(route="/test_result")
    def test_result(self) -> dict:
        """The packed reference prediction on the test image (reference.json)."""
        engine = self.hooks.get_engine()
        if engine.reference is None:
            return _error(ClientError(404, "this model was packed without a reference prediction"))
        return engine.reference

    @bentoml.api(route="/info")
    def info(self, ctx: bentoml.Context) -> dict:
        """Model name, version (= run id), classes, input size, thresholds, metrics, limits, update status
        (counts for anyone; the text of update errors only with the admin token)."""
        out = self.hooks.get_engine().info()
        manager = self.hooks.get_manager()
        private = _authorised(self.hooks.settings, ctx.request)
        out.update(manager.info(private=private) if manager is not None else {"live_run_id": out["run_id"]})
        return out

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context, run_id: str = "latest") -> dict:
        """Load, check and swap to a model_pack run ("latest" or a run id): Bearer token; 404 when disabled."""
        manager = self.hooks.get_manager()
        if self.hooks.settings.admin_token is None:
            status, result = 404, {"error": "Not Found"}
        elif not _authorised(self.hooks.settings, ctx.request):
            status, result = 401, {"error": "missing or wrong admin token"}
        elif manager is None or manager.source is None:
            status, result = 409, {"error": "no model store configured (set CVPIPE_FOLLOW_STORE)"}
        else:
            import anyio

            result = await anyio.to_thread.run_sync(manager.load, str(run_id))
            status = 200 if result["error"] is None else 422
            if status == 200:
                manager.pinned = run_id != "latest"
        ctx.response.status_code = status  # with a ctx parameter BentoML takes the status from it
        return result


Detector.add_asgi_middleware(RequestGuard, settings=lambda: _live["hooks"].settings if "hooks" in _live else SETTINGS)
mimetypes.add_type("image/webp", ".webp")
