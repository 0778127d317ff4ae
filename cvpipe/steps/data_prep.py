"""data_prep: validate (fix, drop or fail per rule, everything reported), convert classes, split
train/val/test stratified by class, and report visually."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from cvpipe.data import incremental
from cvpipe.data.convert import ClassMapping
from cvpipe.data.policy import ValidationPolicy
from cvpipe.data.schema import DetectionData, DetectionDataset, ImageFiles
from cvpipe.pipeline import Folder, Output, Produced, StepContext, StepParams, step


class DataPrepParams(StepParams):
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    classes: ClassMapping = Field(default_factory=ClassMapping)
    split: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train, val, test ratios")
    seed: int = 0
    split_from_source: bool = Field(False, description="keep the split the source records (COCO coco_url "
                                                       "train2017/val2017, folders train/val/test); only images "
                                                       "without one are split by `split`")
    report_samples: int = Field(12, ge=0, description="sample images drawn in the report")
    executor: Literal["serial", "process", "ray"] = "process"
    workers: Optional[int] = Field(None, ge=1)

    @field_validator("split")
    @classmethod
    def _ratios(cls, v):
        if any(x < 0 for x in v) or sum(v) <= 0:
            raise ValueError("split ratios must be >= 0 with a positive sum")
        return v


@step("data_prep", params=DataPrepParams, inputs={"dataset": "data_load.dataset", "images": "data_load.images"},
      resolve={"previous": incremental.resolve_previous_prep},
      outputs=[Output("dataset", DetectionData, description="validated, converted and split dataset "
                                                             "(COCO JSON on demand: cvpipe coco)"),
               Output("images", ImageFiles, content_addressed=True, description="the kept images"),
               Output("report", Folder, description="report.html, PNGs, findings.{json,parquet}")])
def data_prep(params: DataPrepParams, ctx: StepContext, *, dataset: DetectionData, images: ImageFiles,
              previous: incremental.PreviousPrep | None = None) -> Produced:
    """Validate, convert, split and report the loaded dataset (as a change of `previous`, the last version,
    when only image bytes changed and they decode as before)."""
    from cvpipe.data.load import paused_gc
    from cvpipe.data.report import report_candidates
    from cvpipe.data.split import split_table
    from cvpipe.data.validate import summarize_findings, validate

    candidates = report_candidates(dataset.images, params.report_samples * 2, params.seed)
    with paused_gc():
        patched = incremental.patch_prep(previous, dataset, images.path)
        if patched is not None and previous is not None:
            prepared = patched
            report = _patched_report(previous, dataset, images, candidates, prepared, params, ctx)
            # the same tables but two columns of some images: the same summary
            summary = {**{k: v for k, v in previous.summary.items() if k != "incremental"},
                       "incremental": {"from": previous.run_id}}
        else:
            result = validate(dataset, images.path, params.validation, candidates, params.executor, params.workers,
                              source_format=dataset.source.get("format", ""))
            findings, thumbnails = result.findings, result.thumbnails
            converted, conv_findings = _convert_and_split(result.dataset, params)
            del result  # the validated tables: a copy of every box, no longer needed once converted
            for f in findings + conv_findings:  # stamped in place: a copy was a dict per finding more
                f["step"] = "data_prep"
            prepared = DetectionData.of(converted, [{"step": "data_load", **f} for f in dataset.findings] +
                                        findings + conv_findings)
            report = _report(prepared, thumbnails, params, ctx)
            summary = {"images": len(prepared.images), "annotations": len(prepared.annotations),
                       "classes": len(prepared.categories),
                       "splits": {r["split"]: r["images"] for r in split_table(prepared)},
                       "findings": {f"{r['rule']}:{r['action']}": r["count"]
                                    for r in summarize_findings(prepared.findings)}}
    # duplicates kept by policy share one file
    return Produced(summary, dataset=prepared,
                    images=images.subset(set(prepared.images["blob"]) - {""}), report=report)


def _patched_report(previous: incremental.PreviousPrep, dataset: DetectionData, images: ImageFiles,
                    candidates: set[int], prepared: DetectionData, params: DataPrepParams, ctx: StepContext
                    ) -> Folder:
    """A patched version's report: its previous version's, unless the report draws an image that changed."""
    from cvpipe.data.validate import thumbnails

    if incremental.report_unchanged(previous, dataset, candidates):
        return Folder(previous.report)
    return _report(prepared, thumbnails(dataset, images.path, candidates), params, ctx)


def _report(prepared: DetectionData, thumbs: dict, params: DataPrepParams, ctx: StepContext) -> Folder:
    from cvpipe.data.report import write_report

    report = ctx.workdir("report")
    prepared.save_findings(report)
    write_report(prepared, prepared.findings, thumbs, report, params.model_dump(mode="json"))
    return Folder(report)


def _convert_and_split(ds: DetectionDataset, params: DataPrepParams) -> tuple[DetectionDataset, list[dict]]:
    """Class conversion, then the split: the source's own where asked, stratified for the rest."""
    from cvpipe.data.convert import convert_classes
    from cvpipe.data.split import source_splits, stratified_split

    converted, findings = convert_classes(ds, params.classes)
    assignment = source_splits(converted) if params.split_from_source else {}
    rest = converted
    if assignment:  # the images the source did not place (a copy of the tables only when there are such)
        images = converted.images[~converted.images["image_id"].isin(assignment)]
        rest = DetectionDataset.build(images, converted.annotations[converted.annotations["image_id"].isin(
            images["image_id"])], converted.categories)
    assignment.update(stratified_split(rest, params.split, params.seed))
    converted.images["split"] = converted.images["image_id"].map(assignment).astype("string")
    return converted, findings
