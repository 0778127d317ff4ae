"""What model_eval reads from the store beside its inputs (when the runner hands it the store): the
champion it compares with and the summary of the training run behind the candidate."""

from __future__ import annotations

import logging

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


def training_images(store, model_pack_run: str | None) -> dict | None:
    """What the candidate was trained on (model_train's `trained_on` record), or None when unknown."""
    return (train_summary(store, model_pack_run) or {}).get("trained_on")
