"""What model_eval reads from the store beside its inputs, resolved by the runner (the step's `resolve=`; the
step itself never sees the store): the champion it compares with, else the pretrained ONNX the training
started from (the training run's summary names it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvpipe.inference.packed import PackedModel
from cvpipe.pipeline.step import Resolved
from cvpipe.store.hashing import file_digest

log = logging.getLogger(__name__)


def reference_run(store, candidate: str | None):
    """The model_pack run (RunRecord) a candidate is compared with, or None when nothing is promoted.

    It is the champion; when the candidate is the champion itself (model_eval promoted it, and the pipeline
    runs again), it is the champion the candidate replaced, the one it was compared with when it was promoted
    (None when it was the first). So model_eval's own promotion does not change what it compares with, and a
    rerun with nothing changed reuses its cached run; a promotion or rollback by anyone else does change it.
    """
    if store is None:
        return None
    from cvpipe.store.promotion import PromotionLog

    promotions = PromotionLog(store)
    champion = promotions.champion()
    if champion is None or champion.run_id != candidate:
        return champion
    replaced = promotions.rollback_target()
    if replaced is None or replaced == candidate:
        return None
    try:
        rec = store.get_run(replaced, step="model_pack")
    except (KeyError, OSError, ValueError) as e:
        log.warning("the champion %s replaced %s, which cannot be read (%s): no champion to compare with",
                    candidate, replaced, e)
        return None
    return rec if rec.complete else None


def train_summary(store, model_pack_run: str | None) -> dict | None:
    """The summary of the model_train run that the model_pack run packed (None when unknown)."""
    if store is None or model_pack_run is None:
        return None
    try:
        pack = store.get_run(model_pack_run, step="model_pack")
        train = ((pack.manifest.get("inputs") or {}).get("checkpoints") or {}).get("run_id")
        return store.get_run(train, step="model_train").manifest.get("summary") if train else None
    except (KeyError, OSError, ValueError) as e:
        log.info("no training summary for model_pack run %s: %s", model_pack_run, e)
        return None


@dataclass(frozen=True)
class Reference:
    """What the candidate is compared with: a packed champion, or a pretrained ONNX (the training's start)."""

    kind: str  # "champion" | "previous champion" | "pretrained"
    model: PackedModel | None = None
    onnx: Path | None = None


def reference_source(params: Any, store: Any, model_run: str | None) -> Any:
    """What the candidate (the model_pack run `model_run`) is compared with, per model_eval's `baseline` and
    `pretrained` params: the champion's model_pack run (baseline=champion and one is promoted; see
    reference_run), else the pretrained ONNX's path, else None."""
    from cvpipe.evaluation.baseline import pretrained_path

    if params.baseline == "none":
        return None
    if params.baseline == "champion":
        rec = reference_run(store, model_run)
        if rec is not None:
            return rec
    return pretrained_path(params.pretrained, train_summary(store, model_run))


def resolve_reference(params: Any, store: Any, input_runs: dict[str, str | None]) -> Resolved:
    """The step's `reference` (resolved by the runner): keyed on the champion's run id (committed runs never
    change) or the pretrained ONNX's content (where it was found does not matter), so a promotion or rollback
    that changes it makes the next run evaluate again; loaded only when the step runs."""
    model_run = input_runs.get("model")
    ref = reference_source(params, store, model_run)
    if ref is None:
        return Resolved(None)
    if isinstance(ref, Path):
        return Resolved({"pretrained_sha256": file_digest(ref) if ref.is_file() else None},
                        lambda: Reference("pretrained", onnx=ref))

    def champion() -> Reference:  # the one it replaced when the candidate is the champion now
        from cvpipe.store.promotion import PromotionLog

        kind = "previous champion" if PromotionLog(store).champion_id() == model_run else "champion"
        return Reference(kind, model=PackedModel.load(store.materialize(ref, "model")))

    return Resolved({"champion": ref.run_id}, champion)


def resolve_training_images(params: Any, store: Any, input_runs: dict[str, str | None]) -> Resolved:
    """What the candidate was trained on (model_train's `trained_on` record, None when unknown), for the gate's
    held-out check. The candidate's input runs fix it, so it adds nothing to the cache key."""
    return Resolved(None, lambda: (train_summary(store, input_runs.get("model")) or {}).get("trained_on"),
                    keyed=False)
