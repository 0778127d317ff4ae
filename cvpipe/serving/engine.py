"""The detection engine behind the service's endpoints: one packed model, its decode budget, its model thread(s).

The HTTP API is the BentoML service in cvpipe.serving.service; it builds a DetectorEngine from its settings
and calls it. Nothing here knows about HTTP beyond raising `RequestRefused` for a bad image:

- DetectorEngine: PackedModel + Predictor (ONNX Runtime, variant from the settings), test image, reference;
  `predict(image bytes, score_thr)` -> the JSON-able prediction; swapped whole by cvpipe.serving.swap.
- DecodeBudget: the worker's memory budget for decoding, in bytes, taken from the image header before a
  pixel is decoded (an image alone over the budget is 413; others wait for their share, then 503).
- MicroBatcher: optional batching of concurrent requests into one model call (off by default: on CPU it
  measured slower, see docs/production.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cvpipe.inference.packed import PackedModel
from cvpipe.inference.predictor import Predictor
from cvpipe.serving.errors import RequestRefused
from cvpipe.serving.settings import ServiceSettings
from cvpipe.vision import ImageDecodeError, ImageTooLarge, decode_image, read_header
from cvpipe.vision.images import decode_cost_bytes

log = logging.getLogger(__name__)


class DecodeBudget:
    """Bytes of decode memory one worker hands out; acquire() waits (FIFO) until a request's share is free."""

    def __init__(self, total_bytes: int, timeout_s: float = 10.0):
        self.total, self.timeout_s = int(total_bytes), float(timeout_s)
        self.in_use = 0
        self._cond: asyncio.Condition | None = None

    async def acquire(self, cost: int) -> None:
        if cost > self.total:
            raise RequestRefused(413, f"image too large to decode: needs about {cost / 2**20:.0f} MB, the worker's "
                                   f"decode budget is {self.total / 2**20:.0f} MB")
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.in_use + cost <= self.total), self.timeout_s)
            except TimeoutError:
                raise RequestRefused(503, "the worker is busy decoding other large images; retry later") from None
            self.in_use += cost

    async def release(self, cost: int) -> None:
        assert self._cond is not None, "release() without acquire()"
        async with self._cond:
            self.in_use -= cost
            self._cond.notify_all()


class MicroBatcher:
    """Requests that arrive while the model is busy (or within `max_wait_ms` of the first) run as one batch of
    up to `max_batch` letterboxed images on the model thread."""

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
        assert self.queue is not None  # made with the task just above
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        return await fut

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        queue = self.queue
        assert queue is not None  # _loop runs only after submit() made it
        items = [await queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(items) < self.max_batch:
            timeout = deadline - loop.time()
            try:
                items.append(queue.get_nowait() if timeout <= 0 else
                             await asyncio.wait_for(queue.get(), timeout))
            except (TimeoutError, asyncio.QueueEmpty):
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
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
    """A packed model dir (a BentoML model's dir, same layout as the `model` entity) ready to serve."""

    def __init__(self, model_dir: str | Path, settings: ServiceSettings | None = None,
                 budget: DecodeBudget | None = None):
        """`budget`: the worker's decode budget, shared by the engines a worker swaps between (default: a new
        one of the settings' size)."""
        s = settings or ServiceSettings()
        self.model_dir = Path(model_dir)
        self.packed = PackedModel.load(self.model_dir)
        self.meta = self.packed.meta
        self.predictor = Predictor.from_dir(self.packed, variant=s.variant, intra_op_threads=s.intra_op_threads)
        self.test_image = self.packed.test_image or _legacy_test_image(self.model_dir)
        self.reference = self.packed.reference_for(self.predictor.variant)  # each variant has its own reference
        self.max_pixels, self.max_body_bytes = s.max_pixels, s.max_body_bytes
        self.budget = budget or DecodeBudget(s.decode_budget_bytes, s.queue_timeout_s)
        self.min_decode_size = self.predictor.input_size if s.reduced_decode else None
        self.model_threads = s.model_threads_or_auto
        self.executor = ThreadPoolExecutor(max_workers=self.model_threads, thread_name_prefix="cvpipe-model")
        self.batcher = (MicroBatcher(self.predictor.run, self.executor, s.batch_max, s.batch_wait_ms)
                        if s.batch_max > 1 else None)

    @property
    def run_id(self):
        return self.packed.run_id

    def info(self) -> dict:
        m = self.meta
        return {"name": m.get("name"), "version": m.get("run_id"), "run_id": m.get("run_id"),
                "source_run_ids": m.get("source_run_ids", {}), "input_size": m.get("input_size"),
                "classes": [{"id": int(i), "name": n} for i, n in zip(self.predictor.category_ids,
                                                                      self.predictor.class_names)],
                "score_thr": m.get("score_thr"), "nms_thr": m.get("nms_thr"), "max_det": m.get("max_det"),
                "metrics": m.get("metrics", {}), "created_at": m.get("created_at"),
                "variant": getattr(self.predictor, "variant", None),
                "model_threads": self.model_threads,
                "batching": {"max_batch": self.batcher.max_batch if self.batcher else 1,
                             "batches": len(self.batcher.batch_sizes) if self.batcher else None,
                             "largest_batch": max(self.batcher.batch_sizes, default=0) if self.batcher else None},
                "limits": {"max_pixels": self.max_pixels, "max_body_bytes": self.max_body_bytes,
                           "decode_budget_bytes": self.budget.total,
                           "reduced_decode": self.min_decode_size is not None},
                "pid": os.getpid()}

    def _prepare(self, data: bytes):
        """Decode + letterbox: (decoded h, w), model input, letterbox scale."""
        image = decode_image(data, self.max_pixels, self.min_decode_size)
        x, r = self.predictor.preprocess(image)
        return image.shape[:2], x, r

    def _finish(self, out: np.ndarray, header, decoded_hw, r: float, score_thr: float | None) -> dict:
        hw = (header.height, header.width)
        if decoded_hw != hw:  # a reduced decode: boxes are scaled back to the original image's pixels
            r = r * decoded_hw[1] / header.width
        det = self.predictor.postprocess(out, r, hw, score_thr)
        return {"detections": self.predictor.to_json(det), "image": {"width": header.width, "height": header.height},
                "model": {"run_id": self.run_id}}

    def _predict_sync(self, data: bytes, header, score_thr: float | None) -> dict:
        """The whole request on one model thread: every thread hand-off is a wake-up the OS may delay."""
        decoded_hw, x, r = self._prepare(data)
        return self._finish(self.predictor.run(x[None])[0], header, decoded_hw, r, score_thr)

    def _predict_timed(self, data: bytes, header, score_thr: float | None) -> tuple[dict, float]:
        """_predict_sync and the CPU time its thread spent (ms): the model's cost, whatever else runs."""
        t0 = time.thread_time()
        out = self._predict_sync(data, header, score_thr)
        return out, (time.thread_time() - t0) * 1000

    def predict_sync_timed(self, data: bytes, score_thr: float | None = None) -> tuple[dict, float]:
        """A whole request in the calling thread, outside the decode budget (a release's mirrored copies: one
        at a time, on their own low-priority thread). Raises RequestRefused for a bad image."""
        with refusing_bad_images():
            return self._predict_timed(data, read_header(data, self.max_pixels), score_thr)

    async def predict(self, data: bytes, score_thr: float | None = None) -> dict:
        return (await self.predict_timed(data, score_thr))[0]

    async def predict_timed(self, data: bytes, score_thr: float | None = None) -> tuple[dict, float | None]:
        """(prediction, CPU ms of the model thread; None when batched)."""
        with refusing_bad_images():
            header = read_header(data, self.max_pixels)
        cost = decode_cost_bytes(header, self.min_decode_size)
        loop = asyncio.get_running_loop()
        await self.budget.acquire(cost)
        try:
            with refusing_bad_images():
                if self.batcher is None:
                    return await loop.run_in_executor(self.executor, self._predict_timed, data, header, score_thr)
                decoded_hw, x, r = await loop.run_in_executor(None, self._prepare, data)
        finally:
            await self.budget.release(cost)
            if cost > 64 * 2**20:
                release_free_memory()
        out = await self.batcher.submit(x)  # the decoded image is freed: only the letterboxed input waits
        return self._finish(out, header, decoded_hw, r, score_thr), None


@contextlib.contextmanager
def refusing_bad_images() -> Iterator[None]:
    """An image the client sent that is too large (413) or not an image (400) becomes its refusal."""
    try:
        yield
    except ImageTooLarge as e:
        raise RequestRefused(413, str(e)) from None
    except ImageDecodeError as e:
        raise RequestRefused(400, str(e)) from None


def _legacy_test_image(model_dir: Path) -> Path | None:
    """Packs older than model.json's `test_image` key: the one plain test_image.* file in the dir."""
    found = [p for p in sorted(model_dir.glob("test_image.*")) if p.is_file() and not p.is_symlink()]
    return found[0] if found else None


def release_free_memory() -> None:
    """Give freed heap back to the OS after a large decode (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def limit_heap_growth(mmap_threshold: int = 8 * 2**20, trim_threshold: int = 16 * 2**20, arenas: int = 2) -> None:
    """glibc: allocations over mmap_threshold (decoded photos) are mmapped and unmapped when freed, at most
    `arenas` malloc arenas exist, and free heap is returned to the OS only past trim_threshold, so a burst of
    large images does not leave the worker's RSS high while an ordinary request's buffers (a decoded photo, the
    letterboxed input: a few MB) are reused instead of being trimmed and page-faulted in again on every request
    (fixing the mmap threshold also fixes glibc's trim threshold at 128 KB: that alone cost 0.8-1.6 ms/request)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (fixing it also stops glibc raising it)
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
