"""Executors for per-item work inside a step (decode, validate, hash, thumbnail): the same `map` on one
process, a local process pool (default), or a Ray cluster for data that outgrows one machine.
Which one runs is a step param, never code: results come back in input order either way."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ExecutorKind = Literal["serial", "process", "ray"]
# Below this many items a process pool costs more than it saves (measured: 0.6x on 104 images, 1.3-1.6x on 2000).
POOL_MIN_ITEMS = 200


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def parallel_map(fn: Callable[[T], R], items: Iterable[T], kind: ExecutorKind = "process",
                 workers: int | None = None, chunksize: int = 16) -> Iterator[R]:
    """Yield fn(item) for each item, in order. `fn` must be a picklable top-level function."""
    items = list(items)
    workers = workers or default_workers()
    chunksize = max(1, min(chunksize, len(items) // (workers * 4)))  # small inputs still spread over workers
    if kind == "serial" or (kind == "process" and (workers == 1 or len(items) < POOL_MIN_ITEMS)):
        yield from map(fn, items)
    elif kind == "process":
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, items, chunksize=chunksize)
    elif kind == "ray":
        yield from _ray_map(fn, items, chunksize)
    else:
        raise ValueError(f"unknown executor {kind!r}: use serial, process or ray")


def _run_chunk(fn: Callable, chunk: list) -> list:
    return [fn(x) for x in chunk]


def _ray_map(fn: Callable[[T], R], items: list[T], chunksize: int) -> Iterator[R]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("executor 'ray' needs Ray: pip install 'cvpipe[ray]' (or ray)") from None
    if not ray.is_initialized():
        # RAY_ADDRESS points at an existing cluster; without it Ray starts a local one.
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    remote = ray.remote(_run_chunk)
    fn_ref = ray.put(fn)
    refs = [remote.remote(fn_ref, items[i:i + chunksize]) for i in range(0, len(items), chunksize)]
    for ref in refs:  # in submission order, so results stay in input order
        yield from ray.get(ref)
