"""BentoML service (1.4 style) of a packed cvpipe model: thin; the HTTP API is cvpipe.serving.api.

The model artifacts (model.onnx, model.json, test image, reference.json) are a BentoML model; its tag comes
from the bento argument `model_tag` (set at build time), else $CVPIPE_MODEL_TAG, else cvpipe-detector:latest.
Environment: CVPIPE_WORKERS (1), CVPIPE_INTRA_OP_THREADS (1), CVPIPE_BATCH_MAX (1 = no adaptive batching),
CVPIPE_BATCH_WAIT_MS (2), CVPIPE_MAX_BODY_BYTES (20 MiB), CVPIPE_MAX_PIXELS (40 M).
Model updates (cvpipe.serving.swap): CVPIPE_FOLLOW_STORE (store URL; CVPIPE_STORE_ENV, CVPIPE_STORE_PIPELINE),
CVPIPE_FOLLOW=1 to poll it every CVPIPE_FOLLOW_INTERVAL_S (10) s, CVPIPE_ADMIN_TOKEN to enable /admin/reload.
Imports only bentoml, starlette, numpy, pillow, opencv, onnxruntime, fsspec and yaml (no torch).
"""

from __future__ import annotations

import os

import bentoml

from cvpipe.serving.api import DetectorEngine, create_app, env_int
from cvpipe.serving.swap import ModelManager, StoreSource

ARGS = bentoml.use_arguments()
MODEL_TAG = os.environ.get("CVPIPE_MODEL_TAG") or getattr(ARGS, "model_tag", None) or "cvpipe-detector:latest"

_state: dict[str, ModelManager] = {}


def current_engine() -> DetectorEngine:
    return _state["manager"].engine


app = create_app(current_engine, lambda: _state.get("manager"), os.environ.get("CVPIPE_ADMIN_TOKEN") or None)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="cvpipe_detector", workers=env_int("CVPIPE_WORKERS", 1),
                 traffic={"timeout": 60, "max_concurrency": 64})
class Detector:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        url = os.environ.get("CVPIPE_FOLLOW_STORE")
        source = StoreSource(url, os.environ.get("CVPIPE_STORE_ENV", "dev"),
                             os.environ.get("CVPIPE_STORE_PIPELINE", "default")) if url else None
        manager = ModelManager(DetectorEngine.from_env(self.model.path), DetectorEngine.from_env, source)
        _state["manager"] = manager
        if source is not None and os.environ.get("CVPIPE_FOLLOW", "0") not in ("0", "", "false"):
            manager.follow(float(os.environ.get("CVPIPE_FOLLOW_INTERVAL_S", "10")))
