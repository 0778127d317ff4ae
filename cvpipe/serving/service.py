"""BentoML service (1.4 style) of a packed cvpipe model: thin; the HTTP API is cvpipe.serving.api.

The model artifacts (model.onnx, model.json, test image, reference.json) are a BentoML model; its tag comes
from the bento argument `model_tag` (set at build time), else $CVPIPE_MODEL_TAG, else cvpipe-detector:latest.
Environment: CVPIPE_WORKERS (1), CVPIPE_INTRA_OP_THREADS (1), CVPIPE_BATCH_MAX (1 = no adaptive batching),
CVPIPE_BATCH_WAIT_MS (2), CVPIPE_MAX_BODY_BYTES (20 MiB), CVPIPE_MAX_PIXELS (40 M).
Imports only bentoml, starlette, numpy, pillow, opencv and onnxruntime (no torch).
"""

from __future__ import annotations

import os

import bentoml

from cvpipe.serving.api import DetectorEngine, create_app, env_int

ARGS = bentoml.use_arguments()
MODEL_TAG = os.environ.get("CVPIPE_MODEL_TAG") or getattr(ARGS, "model_tag", None) or "cvpipe-detector:latest"

_engine: dict[str, DetectorEngine] = {}


def current_engine() -> DetectorEngine:
    return _engine["engine"]


app = create_app(current_engine)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="cvpipe_detector", workers=env_int("CVPIPE_WORKERS", 1),
                 traffic={"timeout": 60, "max_concurrency": 64})
class Detector:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        _engine["engine"] = DetectorEngine.from_env(self.model.path)
