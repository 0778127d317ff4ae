"""data_load: raw detection data (COCO / YOLO / VOC; folder, archive, URL, object storage) -> the
canonical versioned dataset, images stored once per content digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from cvpipe.data import incremental
from cvpipe.data.schema import DetectionData, ImageFiles
from cvpipe.data.sources import ArchiveLimits
from cvpipe.pipeline import Output, Produced, SourceDigest, StepContext, StepParams, step


class DataLoadParams(StepParams):
    source: str = Field("examples/coco_sample", description="folder, .zip/.tar(.gz) archive, http(s) URL of an "
                                                            "archive, or fsspec URL (s3://bucket/prefix)")
    format: Literal["auto", "coco", "yolo", "voc"] = "auto"
    annotations: Optional[str] = Field(None, description="COCO: annotation json path inside the source")
    images_dir: Optional[str] = Field(None, description="COCO: image folder inside the source")
    classes: Optional[list[str]] = Field(None, description="class order (ids 1..K). VOC: default a classes.txt/"
                                                           "labelmap.txt next to the data, else sorted names; "
                                                           "YOLO: default from data.yaml, classes.txt or obj.names")
    archive_limits: ArchiveLimits = Field(default_factory=ArchiveLimits,
                                          description="limits on archives and downloads (bytes, files, ratio)")
    executor: Literal["serial", "process", "ray"] = "process"
    workers: Optional[int] = Field(None, ge=1)


def digest_data_source(params: DataLoadParams) -> SourceDigest:
    """The content digest of the raw data (the runner keys data_load's cache on it)."""
    from cvpipe.data.sources import digest_source

    return digest_source(params.source, params.archive_limits)


@step("data_load", params=DataLoadParams, source=digest_data_source, resolve={"previous": incremental.resolve_previous},
      outputs=[Output("dataset", DetectionData,
                      description="canonical tables + findings.{json,parquet} + source.json"),
               Output("images", ImageFiles, content_addressed=True, description="image files named <sha256><ext>")])
def data_load(params: DataLoadParams, ctx: StepContext,
              previous: incremental.PreviousVersion | None = None) -> Produced:
    """Normalise raw detection data into the canonical dataset (as a change of `previous`, the last version,
    when only image bytes changed)."""
    from cvpipe.data.load import normalise, paused_gc, read_raw, sweep_unreferenced
    from cvpipe.data.sources import fetch_source

    source = ctx.source or digest_data_source(params)
    root = fetch_source(params.source, ctx.scratch / "source", params.archive_limits, source)
    images = ctx.workdir("images")
    # no local paths in the source info: they differ from run to run (scratch) and say nothing about the data
    info: dict[str, Any] = {"source": params.source, "digest": source.digest, "files": source.files}
    if source.file_digests is not None:
        info["layout"] = incremental.source_layout(source.file_digests)
    with paused_gc():
        plan = incremental.plan(previous, source, info.get("layout"), root)
        if plan is not None:
            return _changed_version(plan, info, images)
        stored = incremental.previous_images(previous)  # contents stored before are shared, not linked again
        raw = read_raw(root, params.format, params.annotations, params.images_dir, params.classes)
        ds, findings = normalise(raw, images, params.executor, params.workers, set(stored.digests) if stored else None)
    findings = [{**f, "step": "data_load"} for f in findings]
    sweep_unreferenced(images, ds)
    data = DetectionData.of(ds, findings, {**info, "format": raw.format})
    return Produced(_summary(data), dataset=data, images=incremental.shared(stored, _blobs(data), images))


MAX_LISTED = 10_000  # changed images listed in the summary (kept in the run's manifest)


def _changed_version(plan: incremental.Plan, info: dict[str, Any], folder: Path) -> Produced:
    """The previous version with some images' bytes changed (cvpipe.data.incremental): their new contents are
    linked into `folder` and stored, the previous version's other images shared."""
    data = incremental.apply(plan, info, folder)
    changed = sorted(str(plan.old.images.at[c.rows[0], "source"]) for c in plan.changes)
    # the previous version's summary: only digests changed (its boxes and findings are not even read)
    summary = {**{k: v for k, v in plan.summary.items() if k != "incremental"},
               "distinct_files": len(set(data.images["digest"]) - {""}),
               "incremental": {"from": plan.previous, "changed_images": len(changed),
                               # what data_prep needs to patch its own previous version
                               **({"sources": changed} if len(changed) <= MAX_LISTED else {})}}
    return Produced(summary, dataset=data, images=incremental.shared(plan.stored, _blobs(data), folder))


def _blobs(data: DetectionData) -> set[str]:
    return set(data.images["blob"].tolist()) - {""}


def _summary(data: DetectionData) -> dict[str, Any]:
    by_rule: dict[str, int] = {}
    for f in data.findings:
        by_rule[f["rule"]] = by_rule.get(f["rule"], 0) + 1
    return {"format": data.source.get("format", ""), "images": len(data.images),
            "annotations": len(data.annotations), "categories": len(data.categories),
            "distinct_files": len(set(data.images["digest"]) - {""}), "findings": len(data.findings),
            **({"findings_by_rule": by_rule} if by_rule else {})}
