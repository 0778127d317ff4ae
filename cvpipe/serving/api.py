"""The model service's HTTP API as a plain Starlette app (BentoML mounts it; tests can also use it directly).

Endpoints (all JSON unless noted; each accepts GET and POST except predict, POST only):
- POST /predict      image as multipart field `image`, or the raw image bytes as the body; optional
                     `score_thr` (query or form field). -> {"detections": [{"box": [x1,y1,x2,y2], "score",
                     "category_id", "category_name"}], "image": {"width", "height"}, "model": {"run_id"}}
- /test_data         the packed test image (its own content type)
- /test_result       the packed reference prediction on it (reference.json, as packed)
- /info              name, version (= run id), classes, input size, thresholds, metrics at pack time
Bad input is a 4xx with {"error": message}: 400 undecodable image / bad parameter / missing field,
411-413 body too large, 413 image too large (pixels), 415 never (any body is tried as an image).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import mimetypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cvpipe.vision import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLarge, decode_image
from cvpipe.inference.predictor import Predictor

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


class MicroBatcher:
    """Adaptive batching: requests that arrive while the model is busy (or within `max_wait_ms` of the
    first) run as one batch of up to `max_batch` letterboxed images on the single model thread."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], executor: ThreadPoolExecutor,
                 max_batch: int = 8, max_wait_ms: float = 2.0):
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10000)  # recent, for /info

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self.task is None or self.task.done():
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    items.append(self.queue.get_nowait() if timeout <= 0 else
                                 await asyncio.wait_for(self.queue.get(), timeout))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            self.batch_sizes.append(len(items))
            try:
                out = await loop.run_in_executor(self.executor, self.run_batch, np.stack([x for x, _ in items]))
                for (_, fut), o in zip(items, out):
                    if not fut.done():
                        fut.set_result(o)
            except Exception as e:  # every waiting request gets the error, the loop goes on
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)


class DetectorEngine:
    """The packed model (a BentoML model's dir, same layout as the `model` entity) behind the API."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 1, max_batch: int = 1,
                 max_wait_ms: float = 2.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.model_dir = Path(model_dir)
        self.meta = json.loads((self.model_dir / "model.json").read_text())
        self.predictor = Predictor.from_dir(self.model_dir, intra_op_threads=intra_op_threads)
        test_images = sorted(self.model_dir.glob("test_image.*"))
        self.test_image = test_images[0] if test_images else None
        ref = self.model_dir / "reference.json"
        self.reference = json.loads(ref.read_text()) if ref.is_file() else None
        self.max_pixels, self.max_body_bytes = max_pixels, max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvpipe-model")  # one model thread
        self.batcher = MicroBatcher(self.predictor.run, self.executor, max_batch, max_wait_ms) if max_batch > 1 \
            else None

    @classmethod
    def from_env(cls, model_dir: str | Path) -> "DetectorEngine":
        """Settings from CVPIPE_* environment variables (see the service README)."""
        return cls(model_dir, intra_op_threads=env_int("CVPIPE_INTRA_OP_THREADS", 1),
                   max_batch=env_int("CVPIPE_BATCH_MAX", 1), max_wait_ms=env_int("CVPIPE_BATCH_WAIT_MS", 2),
                   max_pixels=env_int("CVPIPE_MAX_PIXELS", DEFAULT_MAX_PIXELS),
                   max_body_bytes=env_int("CVPIPE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))

    @property
    def run_id(self):
        return self.meta.get("run_id")

    def info(self) -> dict:
        m = self.meta
        return {"name": m.get("name"), "version": m.get("run_id"), "run_id": m.get("run_id"),
                "source_run_ids": m.get("source_run_ids", {}), "input_size": m.get("input_size"),
                "classes": [{"id": int(i), "name": n} for i, n in zip(m.get("category_ids", []), m["class_names"])],
                "score_thr": m.get("score_thr"), "nms_thr": m.get("nms_thr"), "max_det": m.get("max_det"),
                "metrics": m.get("metrics", {}), "created_at": m.get("created_at"),
                "batching": {"max_batch": self.batcher.max_batch if self.batcher else 1,
                             "batches": len(self.batcher.batch_sizes) if self.batcher else None,
                             "largest_batch": max(self.batcher.batch_sizes, default=0) if self.batcher else None},
                "pid": os.getpid()}

    def response(self, det, h: int, w: int) -> dict:
        return {"detections": self.predictor.to_json(det), "image": {"width": int(w), "height": int(h)},
                "model": {"run_id": self.run_id}}

    def _prepare(self, data: bytes):
        image = decode_image(data, self.max_pixels)
        return image.shape[:2], *self.predictor.preprocess(image)

    async def predict(self, data: bytes, score_thr: float | None) -> dict:
        # decode + letterbox and postprocess on the thread pool, the model on its own single thread
        hw, x, r = await run_in_threadpool(self._prepare, data)
        if self.batcher is not None:
            decoded = await self.batcher.submit(x)
        else:
            loop = asyncio.get_running_loop()
            decoded = (await loop.run_in_executor(self.executor, self.predictor.run, x[None]))[0]
        det = await run_in_threadpool(self.predictor.postprocess, decoded, r, hw, score_thr)
        return self.response(det, *hw)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BadRequest(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
        except ValueError:
            raise BadRequest(400, f"bad Content-Length header {declared!r}") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette re-reads the cached body when parsing a form
    return body


def parse_score_thr(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadRequest(400, f"score_thr must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise BadRequest(400, f"score_thr must be between 0 and 1, got {v}")
    return v


async def image_from_request(request: Request, limit: int) -> tuple[bytes, str | None]:
    """(image bytes, score_thr form value) from a multipart `image` field or the raw body."""
    body = await read_body(request, limit)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as e:  # malformed multipart
            raise BadRequest(400, f"malformed multipart body: {e}") from None
        try:
            field = form.get("image")
            if field is None:
                raise BadRequest(400, "the multipart form has no 'image' field (fields sent: "
                                      f"{sorted(form.keys()) or 'none'}); send the image as field 'image' "
                                      "or as the raw request body")
            data = await field.read() if hasattr(field, "read") else str(field).encode()
            return data, form.get("score_thr")
        finally:
            await form.close()
    if ctype.startswith("application/x-www-form-urlencoded"):
        raise BadRequest(400, "send the image as multipart field 'image' or as the raw request body, "
                              "not as a url-encoded form")
    return body, None


def create_app(get_engine: Callable[[], DetectorEngine], get_manager: Callable[[], object | None] = lambda: None,
               admin_token: str | None = None) -> Starlette:
    """The API over whatever engine `get_engine()` returns at request time (set when the service starts).
    POST /admin/reload exists only when `admin_token` is set (Bearer auth); see cvpipe.serving.swap."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def predict(request: Request) -> Response:
        engine = get_engine()
        try:
            data, form_thr = await image_from_request(request, engine.max_body_bytes)
            score_thr = parse_score_thr(request.query_params.get("score_thr", form_thr))
            return JSONResponse(await engine.predict(data, score_thr))
        except BadRequest as e:
            return error(e.status, e.message)
        except ImageTooLarge as e:
            return error(413, str(e))
        except ImageDecodeError as e:
            return error(400, str(e))
        except Exception as e:  # a bug, not the client's fault: logged, reported, the worker lives on
            log.exception("predict failed")
            return error(500, f"internal error: {type(e).__name__}: {e}")

    async def test_data(request: Request) -> Response:
        engine = get_engine()
        if engine.test_image is None:
            return error(404, "this model was packed without a test image")
        media = mimetypes.guess_type(engine.test_image.name)[0] or "application/octet-stream"
        return Response(engine.test_image.read_bytes(), media_type=media)

    async def test_result(request: Request) -> Response:
        engine = get_engine()
        if engine.reference is None:
            return error(404, "this model was packed without a reference prediction")
        return JSONResponse(engine.reference)

    async def info(request: Request) -> Response:
        out = get_engine().info()
        manager = get_manager()
        if manager is not None:
            out.update(manager.info())
        else:
            out["live_run_id"] = out["run_id"]
        return JSONResponse(out)

    async def admin_reload(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            return error(401, "missing or wrong admin token")
        manager = get_manager()
        if manager is None or manager.source is None:
            return error(409, "no model store configured (set CVPIPE_FOLLOW_STORE)")
        try:
            body = json.loads(await read_body(request, 65536) or b"{}")
            run_id = str(body.get("run_id", "latest"))
        except (ValueError, AttributeError, BadRequest):
            return error(400, 'send JSON {"run_id": "<model_pack run id>" | "latest"}')
        result = await run_in_threadpool(manager.load, run_id)
        if result["error"] is None:
            manager.pinned = run_id != "latest"
        return JSONResponse(result, status_code=200 if result["error"] is None else 422)

    admin = [Route("/admin/reload", admin_reload, methods=["POST"])] if admin_token else []
    return Starlette(routes=[*admin,
        Route("/predict", predict, methods=["POST"]),
        Route("/test_data", test_data, methods=["GET", "POST"]),
        Route("/test_result", test_result, methods=["GET", "POST"]),
        Route("/info", info, methods=["GET", "POST"]),
    ])
