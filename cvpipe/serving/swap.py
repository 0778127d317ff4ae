"""Model updates without interruption: load a new packed model beside the live one, check it on its own
test image against its own reference.json, then swap by one reference assignment (in-flight requests finish
on the engine they started with). A failed check keeps the old model and is reported in /info.

Sources of new models: a store (CVPIPE_FOLLOW_STORE=<store url>, CVPIPE_STORE_ENV, CVPIPE_STORE_PIPELINE),
polled every CVPIPE_FOLLOW_INTERVAL_S seconds when CVPIPE_FOLLOW=1, or POST /admin/reload {"run_id": ...}
(only when CVPIPE_ADMIN_TOKEN is set). Torch-free: the Bento carries this module and cvpipe/store.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable


from cvpipe.inference.matching import match_detections

log = logging.getLogger(__name__)


def check_engine(engine) -> str:
    """Raise ValueError unless the engine reproduces its packed reference on its packed test image."""
    if engine.test_image is None or engine.reference is None:
        raise ValueError("the model has no test image / reference.json to check it with")
    from cvpipe.vision import decode_image

    det = engine.predictor.predict(decode_image(engine.test_image.read_bytes()))
    ok, why = match_detections(engine.predictor.to_json(det), engine.reference.get("detections", []))
    if not ok:
        raise ValueError(f"check on the packed test image failed: {why}")
    return why


class StoreSource:
    """model_pack runs of an artifact store: resolve("latest" | run id) -> (run id, local model dir)."""

    def __init__(self, url: str, env: str = "dev", pipeline: str = "default"):
        from cvpipe.store import ArtifactStore

        self.store = ArtifactStore(url, env=env, pipeline=pipeline)

    def latest_run_id(self) -> str | None:
        rec = self.store.latest_run("model_pack")
        return rec.run_id if rec else None

    def resolve(self, run_id: str) -> tuple[str, Path]:
        if run_id == "latest":
            rec = self.store.latest_run("model_pack")
            if rec is None:
                raise KeyError("no complete model_pack run in the store")
        else:
            rec = self.store.get_run(run_id)
            if rec.step != "model_pack":
                raise KeyError(f"run {run_id} is a {rec.step} run, not model_pack")
            if rec.status != "complete":
                raise KeyError(f"model_pack run {run_id} is {rec.status}, not complete")
        return rec.run_id, Path(self.store.materialize(rec, "model"))


class ModelManager:
    """Holds the live DetectorEngine; `engine` is read once per request, swapped by one assignment."""

    def __init__(self, engine, make_engine: Callable[[Path], object], source: StoreSource | None = None):
        self.engine, self.make_engine, self.source = engine, make_engine, source
        self.lock = threading.Lock()  # one swap at a time (requests never take it)
        self.last_swap_error: str | None = None
        self.history: list[dict] = [{"run_id": engine.run_id, "at": time.time(), "event": "start"}]
        self.pinned = False  # an explicit reload to a run id (e.g. a rollback) pauses following
        self.rejected: set[str] = set()  # run ids that failed their check: the follower does not retry them
        self._stop = threading.Event()

    @property
    def live_run_id(self):
        return self.engine.run_id

    def load(self, run_id: str = "latest") -> dict:
        """Load, check, swap. Returns {"swapped", "run_id", "error"}; never raises for a bad model."""
        if self.source is None:
            raise RuntimeError("no model store configured (CVPIPE_FOLLOW_STORE)")
        with self.lock:
            try:
                rid, model_dir = self.source.resolve(run_id)
            except Exception as e:
                return self._rejected(run_id, f"cannot resolve run {run_id!r}: {e}")
            if rid == self.live_run_id:
                return {"swapped": False, "run_id": rid, "error": None, "live_run_id": rid}
            try:
                new = self.make_engine(model_dir)
                why = check_engine(new)
            except Exception as e:
                self.rejected.add(rid)
                return self._rejected(rid, f"{type(e).__name__}: {e}")
            old, self.engine = self.engine, new  # the swap: requests already running keep `old`
            self.last_swap_error = None
            self.history.append({"run_id": rid, "at": time.time(), "event": "swap", "check": why})
            log.info("now serving model_pack run %s (was %s): %s", rid, old.run_id, why)
            threading.Timer(60, old.executor.shutdown, kwargs={"wait": False}).start()  # after in-flight work
            return {"swapped": True, "run_id": rid, "error": None, "live_run_id": rid}

    def _rejected(self, rid: str, error: str) -> dict:
        self.last_swap_error = f"run {rid}: {error}"
        self.history.append({"run_id": rid, "at": time.time(), "event": "rejected", "error": error})
        del self.history[:-50]
        log.warning("keeping model %s; rejected %s", self.live_run_id, self.last_swap_error)
        return {"swapped": False, "run_id": rid, "error": error, "live_run_id": self.live_run_id}

    def info(self) -> dict:
        return {"live_run_id": self.live_run_id, "last_swap_error": self.last_swap_error,
                "history": self.history[-20:], "pinned": self.pinned, "following": self.source is not None and not self._stop.is_set()
                and getattr(self, "_thread", None) is not None}

    def follow(self, interval_s: float) -> None:
        """Poll the store in a daemon thread; swap to each newer complete model_pack run that passes its check."""
        def loop():
            while not self._stop.wait(interval_s):
                try:
                    rid = self.source.latest_run_id()
                    if rid and not self.pinned and rid != self.live_run_id and rid not in self.rejected:
                        self.load(rid)
                except Exception as e:  # a store hiccup must not kill the follower
                    log.warning("polling the store failed: %s", e)
        self._thread = threading.Thread(target=loop, name="cvpipe-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
