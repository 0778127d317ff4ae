"""What model_eval reads from the store beside its inputs (when the runner hands it the store): the
champion's packed model and the summary of the training run behind the candidate."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def champion_dir(store, exclude: str | None = None) -> Path | None:
    """The champion's local model dir, unless there is none or it is the candidate itself."""
    if store is None:
        return None
    from cvpipe.store.promotion import servable_run

    rec = servable_run(store)
    if rec is None or rec.run_id == exclude:
        return None
    return Path(store.materialize(rec, "model"))


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
