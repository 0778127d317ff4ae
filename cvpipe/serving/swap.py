"""Model updates without interruption: a candidate packed model is checked beside the live one, then swapped
in by one reference assignment (in-flight requests finish on the engine they started with). A refused
candidate leaves the live model serving; the refusal is logged, counted and kept for /info.

What a candidate must pass, in this order (each failure is a refusal, never a 500 later):
1. its run id has the store's strict shape and names a complete model_pack run (nothing is joined as a path
   before that);
2. `PackedModel.load`: model.json holds to the contract and every file it names lies inside its run;
3. its model.json run_id is its store run id (else it would be "new" on every poll: refused once, remembered);
4. its serving contract (input size, class names and category ids) equals the live model's: clients rely on
   them, so a model trained for other classes needs a new deployment, not a swap;
5. its ONNX output layout is 5 + number of classes values per box, and it reproduces its own packed
   reference on its own packed test image;
6. on the LIVE model's test image it finds most boxes of the live model's reference (min_live_recall):
   a model consistent only with itself (detects nothing, or packed with score_thr 0.99 and its own output as
   reference) is refused, unless the operator accepts the risk (reload with accept_risk, or a promotion
   recorded with `cvpipe promote --accept-risk`). A release (cvpipe.serving.release) measures agreement on
   live traffic instead.

Sources (cvpipe.serving.service wires them from the environment): a store, where "latest" means the
champion of the promotion log (cvpipe.store.promotion), never merely the newest model_pack run; polled every
CVPIPE_FOLLOW_INTERVAL_S when CVPIPE_FOLLOW=1, or POST /admin/reload. Torch-free: the Bento carries it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cvpipe.inference.matching import detection_recall, match_detections
from cvpipe.inference.packed import PackedModel

log = logging.getLogger(__name__)

_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s'\"(),:;]+/)+([^\s'\"(),:;]*)")


class SwapRefused(ValueError):
    """A candidate model that may not replace the live one (the message says why, without paths)."""


def scrub_paths(text: str, roots: tuple[str, ...] = ()) -> str:
    """`text` with absolute paths cut to their last component: errors are shown over HTTP."""
    for root in sorted((r for r in roots if r), key=len, reverse=True):
        text = text.replace(root.rstrip("/") + "/", "").replace(root, "<store>")
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)


def contract_differences(live: dict, candidate: dict) -> list[str]:
    """Human-readable differences between two serving contracts (PackedModel.serving_contract())."""
    diffs = []
    if live.get("input_size") != candidate.get("input_size"):
        diffs.append(f"input size {candidate.get('input_size')} (live {live.get('input_size')})")
    ln, cn = live.get("class_names", []), candidate.get("class_names", [])
    if ln != cn:
        if sorted(ln) == sorted(cn):
            diffs.append("the same class names in another order (labels would mean other classes)")
        else:
            diffs.append(f"{len(cn)} class names {cn[:5]}{'...' if len(cn) > 5 else ''} (live {len(ln)}: "
                         f"{ln[:5]}{'...' if len(ln) > 5 else ''})")
    elif live.get("category_ids") != candidate.get("category_ids"):
        diffs.append("other category ids for the same class names")
    return diffs


def check_candidate(model_dir: Path, store_run_id: str, live_contract: dict | None) -> PackedModel:
    """Steps 2-4 above on a candidate dir; SwapRefused names the first problem."""
    try:
        model = PackedModel.load(model_dir)
        contract = model.serving_contract()
    except ValueError as e:  # PackedModelError included
        raise SwapRefused(f"not a valid packed model: {e}") from None
    if model.run_id != store_run_id:
        raise SwapRefused(f"its model.json says run_id {str(model.run_id)[:80]!r}, but it is store run "
                          f"{store_run_id}; refusing a model that does not know its own run")
    if live_contract is not None:
        diffs = contract_differences(live_contract, contract)
        if diffs:
            raise SwapRefused("serving contract differs from the live model's: " + "; ".join(diffs))
    return model


def check_engine(engine) -> str:
    """Step 5 above on a loaded engine: output layout, then its own reference on its own test image."""
    if engine.test_image is None or engine.reference is None:
        raise SwapRefused("the model has no test image / reference.json to check it with")
    from cvpipe.vision import decode_image

    predictor = engine.predictor
    image = decode_image(engine.test_image.read_bytes())
    x, scale = predictor.preprocess(image)
    raw = predictor.run(x[None])
    expected = 5 + len(predictor.class_names)
    if raw.ndim != 3 or raw.shape[-1] != expected:
        raise SwapRefused(f"the ONNX model gives {raw.shape[-1]} values per box, its model.json names "
                          f"{len(predictor.class_names)} classes ({expected} expected)")
    det = predictor.postprocess(raw[0], scale, image.shape[:2])
    ok, why = match_detections(predictor.to_json(det), engine.reference.get("detections", []))
    if not ok:
        raise SwapRefused(f"check on the packed test image failed: it does not reproduce its reference: {why}")
    return why


def check_against_live(engine, live, min_recall: float) -> str:
    """The candidate on the LIVE model's test image, at the candidate's own threshold: it must find at least
    `min_recall` of the boxes of the live model's reference (IoU 0.5, same class). A model that is only
    consistent with itself (detects nothing, or packed with score_thr 0.99 and a reference of its own output)
    is refused here; a model that finds more than the live one is not (a rollback from a degraded model works)."""
    if live.test_image is None or live.reference is None:
        return "no live test image / reference to compare with"
    from cvpipe.vision import decode_image

    predictor = engine.predictor
    image = decode_image(live.test_image.read_bytes())
    found = predictor.to_json(predictor.predict(image))
    ref = live.reference.get("detections", [])
    recall = detection_recall(found, ref)
    if recall < min_recall:
        raise SwapRefused(f"on the live model's test image it finds only {recall:.0%} of the live reference's "
                          f"{len(ref)} boxes (min {min_recall:.0%}; it detects {len(found)}); accept_risk "
                          f"(cvpipe promote --accept-risk) to swap anyway")
    return f"finds {recall:.0%} of the live model's reference boxes on its test image"


class StoreSource:
    """model_pack runs of an artifact store: resolve("latest" | run id) -> (run id, local model dir), where
    "latest" is the promotion log's champion."""

    def __init__(self, url: str, env: str = "dev", pipeline: str = "default"):
        # imported here, not at the top: a service without a store never needs them
        from cvpipe.store import ArtifactStore
        from cvpipe.store.promotion import servable_run, validate_run_id

        self.store = ArtifactStore(url, env=env, pipeline=pipeline)
        self._servable_run, self._validate_run_id = servable_run, validate_run_id

    def latest_run_id(self) -> str | None:
        """The champion's run id (None when nothing was promoted)."""
        rec = self._servable_run(self.store)
        return rec.run_id if rec else None

    def accepts_risk(self, run_id: str) -> bool:
        """Whether the event that made `run_id` champion says the operator accepted the risk of a model that
        fails the check against the live model (`cvpipe promote --accept-risk`)."""
        from cvpipe.store.promotion import PromotionLog

        events = PromotionLog(self.store).events()
        return bool(events) and events[-1].champion == run_id and events[-1].data.get("accept_risk") is True

    def resolve(self, run_id: str) -> tuple[str, Path]:
        if run_id == "latest":
            rid = self.latest_run_id()
            if rid is None:
                raise KeyError("no promoted model in the store (cvpipe promotions); nothing to serve")
        else:
            rid = self._validate_run_id(run_id)
        rec = self.store.get_run(rid, step="model_pack")  # KeyError when it is no model_pack run
        if rec.status != "complete":
            raise KeyError(f"model_pack run {rid} is {rec.status}, not complete")
        return rec.run_id, Path(self.store.materialize(rec, "model"))

    @property
    def roots(self) -> tuple[str, ...]:
        return (str(self.store.root), str(self.store.cache_dir))


def _contract_of(model_dir: Path) -> dict | None:
    try:
        return PackedModel.load(model_dir).serving_contract()
    except ValueError as e:
        log.warning("the live model's contract cannot be read (%s): candidates are not compared with it", e)
        return None


class ModelManager:
    """Holds the live DetectorEngine; `engine` is read once per request, swapped by one assignment.

    Counters for /metrics: `swaps`, `refusals` (candidates refused), `follow_errors` (store polls that
    failed). `info()` is safe for anyone; `info(private=True)` adds the error texts (no absolute paths)."""

    def __init__(self, engine, make_engine: Callable[[Path], object], source: StoreSource | None = None,
                 min_live_recall: float = 0.5):
        self.engine, self.make_engine, self.source = engine, make_engine, source
        self.min_live_recall = min_live_recall  # check_against_live; 0 turns it off
        self.release_active: Callable[[], bool] = lambda: False  # set by a ReleaseController
        self.live_contract = _contract_of(Path(engine.model_dir))
        self.lock = threading.Lock()  # one swap at a time (requests never take it)
        self.swaps = self.refusals = self.follow_errors = 0
        self.last_swap_error: str | None = None
        self.last_refused_run_id: str | None = None
        self.last_follow_error: str | None = None
        self.history: list[dict] = [{"run_id": engine.run_id, "at": time.time(), "event": "start"}]
        self.pinned = False  # an explicit reload to a run id (e.g. a rollback) pauses following
        self.rejected: set[str] = set()  # refused run ids: the follower does not retry them
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_event: Callable[[str], None] | None = None  # "swap" | "refusal" | "follow_error" (for /metrics)

    def _count(self, event: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("metrics hook failed")

    @property
    def live_run_id(self):
        return self.engine.run_id

    def load(self, run_id: str = "latest", accept_risk: bool = False) -> dict:
        """Resolve, check, swap. Returns {"swapped", "run_id", "error", "live_run_id"}; never raises for a
        bad candidate or run id. `accept_risk`: skip the check against the live model's test image."""
        if self.source is None:
            raise RuntimeError("no model store configured (CVPIPE_FOLLOW_STORE)")
        with self.lock:
            try:
                rid, model_dir = self.source.resolve(run_id)
            except Exception as e:  # noqa: BLE001 - any resolution failure is a refusal
                shown = run_id if isinstance(run_id, str) and len(run_id) <= 80 else "(invalid)"
                return self._refused(None, f"cannot resolve run {shown!r}: {_text(e)}")
            if rid == self.live_run_id:
                return {"swapped": False, "run_id": rid, "error": None, "live_run_id": rid}
            try:
                check_candidate(model_dir, rid, self.live_contract)
                new = self.make_engine(model_dir)
                why = check_engine(new)
                if accept_risk:
                    why += "; not compared with the live model (risk accepted)"
                elif self.min_live_recall > 0:
                    why += "; " + check_against_live(new, self.engine, self.min_live_recall)
            except Exception as e:  # noqa: BLE001 - a bad model is refused whatever it raised
                self.rejected.add(rid)
                return self._refused(rid, _text(e))
            self._swap_in(new, why)
            return {"swapped": True, "run_id": rid, "error": None, "live_run_id": rid}

    def install(self, new, why: str) -> None:
        """Swap in an engine checked elsewhere (a release's challenger, checked at its start and on traffic)."""
        with self.lock:
            self._swap_in(new, why)

    def _swap_in(self, new, why: str) -> None:
        old, self.engine = self.engine, new  # the swap: requests already running keep `old`
        self.swaps += 1
        self._count("swap")
        self.last_swap_error = None
        self._remember({"run_id": new.run_id, "at": time.time(), "event": "swap", "check": why})
        log.info("now serving model_pack run %s (was %s): %s", new.run_id, old.run_id, why)
        threading.Timer(60, old.executor.shutdown, kwargs={"wait": False}).start()  # after in-flight work

    def _refused(self, rid: str | None, error: str) -> dict:
        error = scrub_paths(error, self.source.roots if self.source else ())
        self.refusals += 1
        self._count("refusal")
        self.last_refused_run_id = rid
        self.last_swap_error = f"run {rid}: {error}" if rid else error
        self._remember({"run_id": rid, "at": time.time(), "event": "rejected", "error": error})
        log.warning("keeping model %s; refused %s", self.live_run_id, self.last_swap_error)
        return {"swapped": False, "run_id": rid, "error": error, "live_run_id": self.live_run_id}

    def _remember(self, entry: dict) -> None:
        self.history.append(entry)
        del self.history[:-50]

    @property
    def following(self) -> bool:
        return self.source is not None and self._thread is not None and not self._stop.is_set()

    def info(self, private: bool = False) -> dict:
        """Public: the live run and counts. Private (authorised callers only): error texts and history."""
        out = {"live_run_id": self.live_run_id, "pinned": self.pinned, "following": self.following,
               "swaps": self.swaps, "refusals": self.refusals, "follow_errors": self.follow_errors}
        if private:
            out.update(last_swap_error=self.last_swap_error, last_refused_run_id=self.last_refused_run_id,
                       last_follow_error=self.last_follow_error, history=self.history[-20:])
        return out

    def poll_once(self) -> dict | None:
        """One follower step: swap to the champion when it is new and not refused before."""
        assert self.source is not None, "poll_once() follows a store source"
        try:
            rid = self.source.latest_run_id()
        except Exception as e:  # noqa: BLE001 - a store hiccup must not kill the follower
            self.follow_errors += 1
            self._count("follow_error")
            self.last_follow_error = scrub_paths(_text(e), self.source.roots)
            log.warning("polling the store failed: %s", self.last_follow_error)
            return None
        if rid and not self.pinned and rid != self.live_run_id and rid not in self.rejected \
                and not self.release_active():  # a release decides the champion of this worker until it ends
            return self.load(rid, accept_risk=self._accepts_risk(rid))
        return None

    def _accepts_risk(self, run_id: str) -> bool:
        try:
            return bool(self.source is not None and self.source.accepts_risk(run_id))
        except Exception:  # noqa: BLE001 - unreadable: the check runs
            return False

    def follow(self, interval_s: float) -> None:
        """Poll the store in a daemon thread (see poll_once)."""
        def loop():
            while not self._stop.wait(interval_s):
                self.poll_once()
        self._thread = threading.Thread(target=loop, name="cvpipe-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _text(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return f"{type(e).__name__}: {msg}"[:500]
