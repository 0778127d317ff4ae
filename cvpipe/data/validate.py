"""data_prep's validation: each rule has a policy (fix, drop, keep or fail) and every change is a finding.

Rules, in the order they apply:
  missing_image, corrupt_image, size_mismatch, duplicate_image   (per image, each image decoded once)
  unknown_category, nan_box, duplicate_ann_id, out_of_image, tiny_box   (per annotation)
  empty_image                                                       (images left without annotations)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from cvpipe.data.schema import DetectionDataset
from cvpipe.pipeline.executor import parallel_map
from cvpipe.progress import track

Image.MAX_IMAGE_PIXELS = 200_000_000  # decompression-bomb guard for data we validate


class ValidationFailed(ValueError):
    """A rule whose policy is 'fail' found problems."""


class ValidationPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    missing_image: Literal["drop", "fail"] = "drop"
    corrupt_image: Literal["drop", "fail"] = "drop"
    size_mismatch: Literal["fix", "drop", "fail"] = Field("fix", description="fix: use the decoded size")
    duplicate_image: Literal["drop", "keep", "fail"] = Field("drop", description="drop: keep the first copy")
    unknown_category: Literal["drop", "fail"] = "drop"
    nan_box: Literal["drop", "fail"] = "drop"
    duplicate_ann_id: Literal["fix", "drop", "fail"] = Field("fix", description="fix: give new ids")
    out_of_image: Literal["fix", "drop", "fail"] = Field("fix", description="fix: clip to the image")
    tiny_box: Literal["drop", "keep", "fail"] = "drop"
    min_box_size: float = Field(1.0, ge=0, description="boxes narrower or lower than this (px) are tiny")
    empty_image: Literal["keep", "drop", "fail"] = Field("keep", description="keep: as negatives")


@dataclass
class ImageCheck:
    width: int = 0
    height: int = 0
    error: str = ""
    thumbnail: np.ndarray | None = None  # RGB, for the report's sample grid (decoded here, once)


def check_image(job: tuple[Path, bool]) -> ImageCheck:
    """Fully decode one image (catches truncation); optionally return a small thumbnail."""
    path, want_thumb = job
    try:
        with Image.open(path) as im:
            im.load()
            out = ImageCheck(width=im.width, height=im.height)
            if want_thumb:
                thumb = im.convert("RGB")
                thumb.thumbnail((320, 320))
                out.thumbnail = np.asarray(thumb)
            return out
    except FileNotFoundError:
        return ImageCheck(error="missing")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt image
        return ImageCheck(error=f"{type(e).__name__}: {e}")


@dataclass
class ValidationResult:
    dataset: DetectionDataset
    findings: list[dict] = field(default_factory=list)
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)


def _finding(rule: str, action: str, image_id=None, ann_id=None, detail: str = "") -> dict:
    return {"rule": rule, "action": action, "image_id": None if image_id is None else int(image_id),
            "ann_id": None if ann_id is None else int(ann_id), "detail": detail}


def validate(ds: DetectionDataset, images_dir: Path, policy: ValidationPolicy, thumbnail_ids: set[int] = frozenset(),
             executor: str = "process", workers: int | None = None) -> ValidationResult:
    findings: list[dict] = []
    images = ds.images.copy()
    anns = ds.annotations.copy()

    def apply(rule: str, mask: pd.Series, frame: str, detail) -> pd.Series:
        """Record each row hit by a rule; returns the mask (callers drop or fix per policy)."""
        policy_value = getattr(policy, rule)
        hit = (images if frame == "images" else anns)[mask]
        if len(hit) and policy_value == "fail":
            raise ValidationFailed(f"{rule}: {len(hit)} {'images' if frame == 'images' else 'annotations'} "
                                   f"(policy 'fail'); first: {detail(next(hit.itertuples()))}")
        action = {"drop": "dropped", "fix": "fixed", "keep": "kept"}[policy_value]
        for r in hit.itertuples():
            findings.append(_finding(rule, action, r.image_id, getattr(r, "ann_id", None), detail(r)))
        return mask

    # ---- per image: decode each once ----
    jobs = [(images_dir / b if b else images_dir / f"__missing__{i}", int(i) in thumbnail_ids)
            for b, i in zip(images["blob"], images["image_id"])]
    checks = list(track(parallel_map(check_image, jobs, kind=executor, workers=workers, chunksize=8),
                        "data_prep: decoding images", total=len(jobs)))
    errors = pd.Series([c.error for c in checks], index=images.index)
    real_w = pd.Series([c.width for c in checks], index=images.index)
    real_h = pd.Series([c.height for c in checks], index=images.index)
    missing = apply("missing_image", errors == "missing", "images", lambda r: f"{r.file_name}: file not found")
    corrupt = apply("corrupt_image", (errors != "") & (errors != "missing"), "images",
                    lambda r: f"{r.file_name}: {errors[r.Index]}")
    ok = ~(missing | corrupt)
    mismatch = ok & ((real_w != images["width"]) | (real_h != images["height"]))
    apply("size_mismatch", mismatch, "images",
          lambda r: f"{r.file_name}: recorded {r.width}x{r.height}, decoded {real_w[r.Index]}x{real_h[r.Index]}")
    if policy.size_mismatch == "fix":
        images.loc[mismatch, "width"] = real_w[mismatch]
        images.loc[mismatch, "height"] = real_h[mismatch]
        drop_images = ~ok
    else:
        drop_images = ~ok | mismatch
    dup = ok & ~drop_images & images["digest"].duplicated(keep="first") & (images["digest"] != "")
    first_of = images[~images["digest"].duplicated(keep="first")].set_index("digest")["image_id"]
    apply("duplicate_image", dup, "images",
          lambda r: f"{r.file_name}: same bytes as image {first_of.get(r.digest)}")
    if policy.duplicate_image == "drop":
        drop_images |= dup
    dropped_ids = set(images.loc[drop_images, "image_id"])
    gone = anns["image_id"].isin(dropped_ids)
    for r in anns[gone].itertuples():
        findings.append(_finding("image_dropped", "dropped", r.image_id, r.ann_id, "annotation of a dropped image"))
    images, anns = images[~drop_images], anns[~gone]

    # ---- per annotation ----
    known = set(ds.categories["category_id"])
    unknown = apply("unknown_category", ~anns["category_id"].isin(known), "annotations",
                    lambda r: f"category id {r.category_id} is not in the category list")
    anns = anns[~unknown]
    nan = apply("nan_box", anns[["x", "y", "w", "h"]].isna().any(axis=1) |
                ~np.isfinite(anns[["x", "y", "w", "h"]].to_numpy(dtype=float)).all(axis=1), "annotations",
                lambda r: f"box {[r.x, r.y, r.w, r.h]} is not a number")
    anns = anns[~nan]
    dup_ann = apply("duplicate_ann_id", anns["ann_id"].duplicated(keep="first"), "annotations",
                    lambda r: f"annotation id {r.ann_id} is used more than once")
    if policy.duplicate_ann_id == "fix" and dup_ann.any():
        next_id = int(anns["ann_id"].max()) + 1
        anns.loc[dup_ann, "ann_id"] = np.arange(next_id, next_id + int(dup_ann.sum()))
    elif policy.duplicate_ann_id == "drop":
        anns = anns[~dup_ann]
    size = images.set_index("image_id")[["width", "height"]]
    W = anns["image_id"].map(size["width"]).astype(float)
    H = anns["image_id"].map(size["height"]).astype(float)
    x1, y1 = anns["x"], anns["y"]
    x2, y2 = x1 + anns["w"], y1 + anns["h"]
    outside = (x1 < 0) | (y1 < 0) | (x2 > W) | (y2 > H) | (anns["w"] < 0) | (anns["h"] < 0)
    apply("out_of_image", outside, "annotations",
          lambda r: f"box xywh {[round(v, 2) for v in (r.x, r.y, r.w, r.h)]} outside the "
                    f"{int(W[r.Index])}x{int(H[r.Index])} image")
    if policy.out_of_image == "fix":
        lo_x, hi_x = np.minimum(x1, x2).clip(0, W), np.maximum(x1, x2).clip(0, W)
        lo_y, hi_y = np.minimum(y1, y2).clip(0, H), np.maximum(y1, y2).clip(0, H)
        anns = anns.assign(x=lo_x, y=lo_y, w=hi_x - lo_x, h=hi_y - lo_y)
        anns.loc[outside, "area"] = (anns["w"] * anns["h"])[outside]
    elif policy.out_of_image == "drop":
        anns = anns[~outside]
    tiny = apply("tiny_box", (anns["w"] < max(policy.min_box_size, 1e-9)) | (anns["h"] < max(policy.min_box_size, 1e-9)),
                 "annotations", lambda r: f"box {r.w:.2f}x{r.h:.2f} px is below {policy.min_box_size} px")
    if policy.tiny_box == "drop":
        anns = anns[~tiny]

    # ---- images left without markup ----
    empty = ~images["image_id"].isin(anns["image_id"])
    apply("empty_image", empty, "images", lambda r: f"{r.file_name}: no annotations")
    if policy.empty_image == "drop":
        images = images[~empty]
    thumbs = {int(i): c.thumbnail for i, c in zip(ds.images["image_id"], checks) if c.thumbnail is not None}
    out = DetectionDataset.build(images, anns, ds.categories)
    return ValidationResult(out, findings, thumbs)


FINDING_COLUMNS = ["step", "rule", "action", "image_id", "ann_id", "detail"]


def write_findings(findings: list[dict], directory: Path) -> None:
    """findings.json (for people and tools) and findings.parquet (a table: one row per affected item)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "findings.json").write_text(json.dumps(findings, indent=1, default=str))
    table = pd.DataFrame(findings, columns=FINDING_COLUMNS)
    table["step"] = table["step"].fillna("")
    table = table.astype({"step": "string", "rule": "string", "action": "string", "image_id": "Int64",
                          "ann_id": "Int64", "detail": "string"})
    table.to_parquet(directory / "findings.parquet", index=False)


def summarize_findings(findings: list[dict]) -> list[dict]:
    """Counts per (rule, action), for the report and the run summary."""
    counts: dict[tuple[str, str], int] = {}
    for f in findings:
        counts[(f["rule"], f["action"])] = counts.get((f["rule"], f["action"]), 0) + 1
    return [{"rule": r, "action": a, "count": n} for (r, a), n in sorted(counts.items())]
