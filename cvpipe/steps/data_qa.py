"""data_qa: find label errors in the prepared data (out-of-fold predictions, one ranked queue per error type,
a self-test with injected errors, an HTML report); all logic lives in cvpipe.labels (see docs/labels.md)."""

from __future__ import annotations

from cvpipe.data.schema import DetectionData, ImageFiles
from cvpipe.labels.find import LabelCheckParams
from cvpipe.pipeline import Folder, Output, Produced, StepContext, step


class DataQAParams(LabelCheckParams):
    pass


@step("data_qa", params=DataQAParams, inputs={"dataset": "data_prep.dataset", "images": "data_prep.images"},
      outputs=[Output("predictions", Folder,
                      description="out-of-fold predictions.parquet and how they were made"),
               Output("queues", Folder, description="queues.parquet, queue_<type>.csv, selftest*.csv, noise_rates.csv"),
               Output("report", Folder, description="report.html with thumbnails")])
def data_qa(params: DataQAParams, ctx: StepContext, *, dataset: DetectionData, images: ImageFiles) -> Produced:
    """Rank likely label errors (missing, spurious, wrong class, bad box, duplicate) with a measured hit rate."""
    from cvpipe.labels.find import find_label_errors

    folders = {name: ctx.workdir(name) for name in ("predictions", "queues", "report")}
    summary = find_label_errors(dataset, images.directory, params, folders["predictions"], folders["queues"],
                                folders["report"])
    return Produced(summary, **{name: Folder(path) for name, path in folders.items()})
