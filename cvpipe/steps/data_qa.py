"""data_qa: find label errors in the prepared data (out-of-fold predictions, one ranked queue per error type,
a self-test with injected errors, an HTML report); all logic lives in cvpipe.labels (see docs/labels.md)."""

from __future__ import annotations

from pathlib import Path

from cvpipe.labels.find import LabelCheckParams
from cvpipe.pipeline import Output, StepContext, step


class DataQAParams(LabelCheckParams):
    pass


@step("data_qa", params=DataQAParams, inputs={"dataset": "data_prep.dataset", "images": "data_prep.images"},
      outputs=[Output("predictions", description="out-of-fold predictions.parquet and how they were made"),
               Output("queues", description="queues.parquet, queue_<type>.csv, selftest*.csv, noise_rates.csv"),
               Output("report", description="report.html with thumbnails")])
def data_qa(params: DataQAParams, ctx: StepContext, *, dataset: Path, images: Path) -> dict:
    """Rank likely label errors (missing, spurious, wrong class, bad box, duplicate) with a measured hit rate."""
    from cvpipe.labels.find import find_label_errors

    return find_label_errors(dataset, images, params, ctx.output("predictions"), ctx.output("queues"),
                             ctx.output("report"))
