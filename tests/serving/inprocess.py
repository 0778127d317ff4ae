"""The service in this process, over a packed model dir: `Detector.to_asgi()` with its settings from CVPIPE_*
variables, exactly as a `bentoml serve` worker reads them (no Bento needed). Run its lifespan (starlette's
TestClient as a context manager, or uvicorn) while the variables are set: the worker reads them at startup."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def service_env(model_dir: str | Path, **settings: Any) -> Iterator[None]:
    """CVPIPE_MODEL_DIR and CVPIPE_<SETTING> set for the block (e.g. max_body_bytes=100_000)."""
    values = {"CVPIPE_MODEL_DIR": str(model_dir), **{f"CVPIPE_{k.upper()}": str(v) for k, v in settings.items()}}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def service_app():
    """A fresh ASGI app of the service (each makes its own Detector and admission control at startup)."""
    from cvpipe.serving.service import Detector

    return Detector.to_asgi(is_main=True)
