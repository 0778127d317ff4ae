"""The whole label check of one data version: out-of-fold predictions -> queues -> self-test -> expected AP gains
and noise rates -> files and an HTML report. The data_qa step and `cvpipe labels` call this.

Files written (queues dir): queues.parquet (every queue, one row per entry, ranked), queue_<type>.csv (the
first `csv_top` entries of each), selftest.csv (per seed and type), selftest_summary.csv, noise_rates.csv,
summary.json. predictions dir: predictions.parquet (out-of-fold), predictions.json (how they were made).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from cvpipe.data.schema import DetectionDataset
from cvpipe.pipeline.step import StepParams

from .apgain import estimate_gains
from .boxes import BoxTable, labels_of
from .calibrate import error_probability, noise_rates
from .oof import OOFParams, out_of_fold_predictions
from .score import ERROR_TYPES, score_labels
from .selftest import SelfTest, self_test, summarize

log = logging.getLogger(__name__)


class LabelCheckParams(StepParams):
    oof: OOFParams = Field(default_factory=OOFParams, description="how the out-of-fold predictions are made")
    selftest_seeds: int = Field(5, ge=1, description="independent injections the self-test averages over")
    selftest_rate: float = Field(0.05, gt=0, le=0.2, description="share of boxes given each error type")
    gain_top: int = Field(200, ge=0, description="entries per queue whose AP gain is computed")
    report_top: int = Field(12, ge=0, description="entries per queue drawn in the report")
    csv_top: int = Field(500, ge=1, description="entries per queue in queue_<type>.csv")


def find_label_errors(dataset_dir: Path, images_dir: Path, params: LabelCheckParams, predictions_dir: Path,
                      queues_dir: Path, report_dir: Path | None) -> dict:
    """Run the check; returns the summary (JSON-able) that also goes to summary.json."""
    ds = DetectionDataset.load(dataset_dir)
    if not ds.class_names:
        raise ValueError("the dataset has no labelled categories (run data_prep first: it assigns training labels)")
    frame, oof_info = out_of_fold_predictions(ds, images_dir, params.oof)
    predictions_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(predictions_dir / "predictions.parquet", index=False)
    (predictions_dir / "predictions.json").write_text(json.dumps(oof_info, indent=2))
    labels, crowd, preds = labels_of(ds), labels_of(ds, crowd=True), BoxTable.from_frame(frame)
    t0 = time.perf_counter()
    queues = score_labels(labels, preds, crowd)
    score_s = time.perf_counter() - t0
    sizes = {int(r.image_id): (int(r.width), int(r.height)) for r in ds.images.itertuples()}
    test = self_test(labels, preds, crowd, sizes, len(ds.class_names), params.selftest_seeds, params.selftest_rate)
    queues = {k: enrich(q, test, labels, preds, params.gain_top) for k, q in queues.items()}
    rates = noise_rates(queues, pd.Series(labels.label).value_counts(), ds.class_names)
    summary = write_results(queues, test, rates, queues_dir, params, oof_info, len(ds.images), score_s)
    if report_dir is not None:
        from .report import write_report

        write_report(ds, images_dir, queues, test, rates, summary, report_dir, params.report_top)
    return summary


def enrich(queue: pd.DataFrame, test: SelfTest, labels: BoxTable, preds: BoxTable, gain_top: int) -> pd.DataFrame:
    """Add p_error (from the self-test) and ap_gain: the expected change of mean AP (points) if fixed."""
    kind = str(queue["type"].iloc[0]) if len(queue) else ""
    queue = queue.copy()
    queue["p_error"] = error_probability(queue, test.curves.get(kind))
    queue["ap_delta"] = estimate_gains(queue, labels, preds, gain_top)
    queue["ap_gain"] = queue["ap_delta"] * queue["p_error"]
    return queue


def write_results(queues: dict[str, pd.DataFrame], test: SelfTest, rates: pd.DataFrame, out: Path,
                  params: LabelCheckParams, oof_info: dict, images: int, score_s: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(queues.values(), ignore_index=True).to_parquet(out / "queues.parquet", index=False)
    for kind, q in queues.items():
        q.head(params.csv_top).to_csv(out / f"queue_{kind}.csv", index=False)
    test.table.to_csv(out / "selftest.csv", index=False)
    summary_table = summarize(test.table)
    summary_table.to_csv(out / "selftest_summary.csv", index=False)
    rates.to_csv(out / "noise_rates.csv", index=False)
    st = {r["type"]: {k: _num(r[k]) for k in ("recall", "recall_min", "precision", "precision_min")}
          for r in summary_table.to_dict("records")}
    summary = {"images": images, "queues": {k: len(q) for k, q in queues.items()}, "selftest": st,
               "selftest_seeds": params.selftest_seeds, "predictions": {k: oof_info.get(k) for k in
                                                                       ("scheme", "key", "cached", "predictions")},
               "score_seconds": round(score_s, 4)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)


def load_queues(queues_dir: Path) -> dict[str, pd.DataFrame]:
    """The queues a check wrote, by type (each ranked)."""
    path = Path(queues_dir) / "queues.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the data_qa step first")
    allq = pd.read_parquet(path)
    return {k: allq[allq["type"] == k].reset_index(drop=True) for k in ERROR_TYPES}
