"""data_prep's validation: each rule has a policy (fix, drop, keep or fail) and every change is a finding.

Rules, in the order they apply:
  missing_image, corrupt_image, size_mismatch, duplicate_image   (per image, each image decoded once)
  unknown_category, nan_box, duplicate_ann_id, inverted_box, out_of_image, tiny_box   (per annotation)
  empty_image                                                       (images left without annotations)

inverted_box: a box whose far corner lies before its near one (x2 < x1 or y2 < y1). When the source format
gives corners (VOC; YOLO, whose centre and size are two corners around the centre), `fix` swaps them back,
which is what the annotator meant; COCO's xywh with a negative size means nothing, so `fix` drops it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cvpipe.data.policy import ValidationPolicy
from cvpipe.data.schema import DetectionDataset
from cvpipe.pipeline.executor import ExecutorKind, parallel_map
from cvpipe.progress import track
from cvpipe.vision import ImageDecodeError, decode_image

CORNER_FORMATS = frozenset({"voc", "yolo"})  # formats whose inverted boxes are swapped corners


class ValidationFailed(ValueError):
    """A rule whose policy is 'fail' found problems."""


@dataclass
class ImageCheck:
    width: int = 0
    height: int = 0
    error: str = ""
    thumbnail: np.ndarray | None = None  # RGB, for the report's sample grid (decoded here, once)


def check_image(job: tuple[Path | None, bool]) -> ImageCheck:
    """Fully decode one image with the vision core's decoder (catches truncation; sizes as displayed, EXIF
    orientation applied); optionally return a small RGB thumbnail. No path: an image data_load found missing."""
    path, want_thumb = job
    if path is None:
        return ImageCheck(error="missing")
    try:
        pixels = decode_image(path.read_bytes())
    except FileNotFoundError:
        return ImageCheck(error="missing")
    except (ImageDecodeError, OSError) as e:
        return ImageCheck(error=f"{type(e).__name__}: {e}")
    out = ImageCheck(width=pixels.shape[1], height=pixels.shape[0])
    if want_thumb:
        thumb = Image.fromarray(np.ascontiguousarray(pixels[..., ::-1]))  # BGR -> RGB; resizing only
        thumb.thumbnail((320, 320))
        out.thumbnail = np.asarray(thumb)
    return out


@dataclass
class ValidationResult:
    dataset: DetectionDataset
    findings: list[dict] = field(default_factory=list)
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)


def _finding(rule: str, action: str, image_id=None, ann_id=None, detail: str = "") -> dict:
    return {"rule": rule, "action": action, "image_id": None if image_id is None else int(image_id),
            "ann_id": None if ann_id is None else int(ann_id), "detail": detail}


ACTIONS = {"drop": "dropped", "fix": "fixed", "keep": "kept", "fail": "failed"}


class _Validation:
    """The tables being validated and the findings so far; one method per group of rules."""

    def __init__(self, ds: DetectionDataset, policy: ValidationPolicy):
        self.ds, self.policy = ds, policy
        # the boxes are not copied: each rule filters them into a new frame (a copy here was 44 MB at 10^5 images)
        self.images, self.anns = ds.images.copy(), ds.annotations
        self.findings: list[dict] = []

    def apply(self, rule: str, mask: pd.Series, frame: str, detail: Callable,
              action: str | None = None) -> pd.Series:
        """Record each row hit by a rule (the policy's action unless given); returns the mask."""
        policy_value = getattr(self.policy, rule)
        hit = (self.images if frame == "images" else self.anns)[mask]
        if len(hit) and policy_value == "fail":
            raise ValidationFailed(f"{rule}: {len(hit)} {'images' if frame == 'images' else 'annotations'} "
                                   f"(policy 'fail'); first: {detail(next(hit.itertuples()))}")
        action = action or ACTIONS[policy_value]
        for r in hit.itertuples():
            self.findings.append(_finding(rule, action, r.image_id, getattr(r, "ann_id", None), detail(r)))
        return mask

    def decoded(self, checks: DecodeChecks) -> None:
        """missing_image, corrupt_image, size_mismatch, duplicate_image; then drop the dropped images' boxes."""
        images, p = self.images, self.policy
        errors = pd.Series(checks.error, index=images.index)
        real_w = pd.Series(checks.width, index=images.index)
        real_h = pd.Series(checks.height, index=images.index)
        missing = self.apply("missing_image", errors == "missing", "images",
                             lambda r: f"{r.file_name}: file not found")
        corrupt = self.apply("corrupt_image", (errors != "") & (errors != "missing"), "images",
                             lambda r: f"{r.file_name}: {errors[r.Index]}")
        ok = ~(missing | corrupt)
        mismatch = ok & ((real_w != images["width"]) | (real_h != images["height"]))
        self.apply("size_mismatch", mismatch, "images", lambda r: f"{r.file_name}: recorded {r.width}x{r.height}, "
                                                                  f"decoded {real_w[r.Index]}x{real_h[r.Index]}")
        drop = ~ok if p.size_mismatch == "fix" else ~ok | mismatch
        if p.size_mismatch == "fix":
            images.loc[mismatch, "width"] = real_w[mismatch]
            images.loc[mismatch, "height"] = real_h[mismatch]
        dup = ok & ~drop & images["digest"].duplicated(keep="first") & (images["digest"] != "")
        first_of = images[~images["digest"].duplicated(keep="first")].set_index("digest")["image_id"]
        self.apply("duplicate_image", dup, "images",
                   lambda r: f"{r.file_name}: same bytes as image {first_of.get(r.digest)}")
        if p.duplicate_image == "drop":
            drop |= dup
        gone = self.anns["image_id"].isin(set(images.loc[drop, "image_id"]))
        for r in self.anns[gone].itertuples():
            self.findings.append(_finding("image_dropped", "dropped", r.image_id, r.ann_id,
                                          "annotation of a dropped image"))
        self.images, self.anns = images[~drop], self.anns[~gone]

    def records(self) -> None:
        """unknown_category, nan_box, duplicate_ann_id."""
        known = set(self.ds.categories["category_id"])
        unknown = self.apply("unknown_category", ~self.anns["category_id"].isin(known), "annotations",
                             lambda r: f"category id {r.category_id} is not in the category list")
        self.anns = self.anns[~unknown]
        xywh = self.anns[["x", "y", "w", "h"]]
        nan = self.apply("nan_box", xywh.isna().any(axis=1) | ~np.isfinite(xywh.to_numpy(dtype=float)).all(axis=1),
                         "annotations", lambda r: f"box {[r.x, r.y, r.w, r.h]} is not a number")
        self.anns = self.anns[~nan]
        dup = self.apply("duplicate_ann_id", self.anns["ann_id"].duplicated(keep="first"), "annotations",
                         lambda r: f"annotation id {r.ann_id} is used more than once")
        if self.policy.duplicate_ann_id == "fix" and dup.any():
            next_id = int(self.anns["ann_id"].max()) + 1
            self.anns.loc[dup, "ann_id"] = np.arange(next_id, next_id + int(dup.sum()))
        elif self.policy.duplicate_ann_id == "drop":
            self.anns = self.anns[~dup]

    def inverted(self, corners: bool) -> None:
        """inverted_box: swap the corners back (corner formats, policy fix) or drop."""
        a = self.anns
        inverted = (a["w"] < 0) | (a["h"] < 0)
        swap = corners and self.policy.inverted_box == "fix"
        self.apply("inverted_box", inverted, "annotations", action=None if swap or self.policy.inverted_box != "fix"
                   else "dropped", detail=lambda r: f"box xywh {[round(v, 2) for v in (r.x, r.y, r.w, r.h)]} has its "
                                                    f"far corner before its near one")
        if swap:
            x1, x2 = np.minimum(a["x"], a["x"] + a["w"]), np.maximum(a["x"], a["x"] + a["w"])
            y1, y2 = np.minimum(a["y"], a["y"] + a["h"]), np.maximum(a["y"], a["y"] + a["h"])
            self.anns = a.assign(x=x1, y=y1, w=x2 - x1, h=y2 - y1)
            self.anns.loc[inverted, "area"] = (self.anns["w"] * self.anns["h"])[inverted]
        else:
            self.anns = a[~inverted]

    def geometry(self) -> None:
        """out_of_image (clip or drop), then tiny_box."""
        size = self.images.set_index("image_id")[["width", "height"]]
        a = self.anns
        W = a["image_id"].map(size["width"]).astype(float)
        H = a["image_id"].map(size["height"]).astype(float)
        x1, y1, x2, y2 = a["x"], a["y"], a["x"] + a["w"], a["y"] + a["h"]
        outside = (x1 < 0) | (y1 < 0) | (x2 > W) | (y2 > H)
        w_of, h_of = W[outside].to_dict(), H[outside].to_dict()  # dicts: a Series lookup per hit was 2/3 of the rule
        self.apply("out_of_image", outside, "annotations",
                   lambda r: f"box xywh {[round(v, 2) for v in (r.x, r.y, r.w, r.h)]} outside the "
                             f"{int(w_of[r.Index])}x{int(h_of[r.Index])} image")
        if self.policy.out_of_image == "fix":
            cx1, cx2, cy1, cy2 = x1.clip(0, W), x2.clip(0, W), y1.clip(0, H), y2.clip(0, H)
            a = a.assign(x=cx1, y=cy1, w=cx2 - cx1, h=cy2 - cy1)
            a.loc[outside, "area"] = (a["w"] * a["h"])[outside]
        elif self.policy.out_of_image == "drop":
            a = a[~outside]
        self.anns = a
        least = max(self.policy.min_box_size, 1e-9)
        tiny = self.apply("tiny_box", (a["w"] < least) | (a["h"] < least), "annotations",
                          lambda r: f"box {r.w:.2f}x{r.h:.2f} px is below {self.policy.min_box_size} px")
        if self.policy.tiny_box == "drop":
            self.anns = a[~tiny]

    def empty(self) -> None:
        empty = ~self.images["image_id"].isin(self.anns["image_id"])
        self.apply("empty_image", empty, "images", lambda r: f"{r.file_name}: no annotations")
        if self.policy.empty_image == "drop":
            self.images = self.images[~empty]


FACTS_BATCH = 10_000  # verdicts recorded in the cache at once
DECODE_FACT = "image_decode/v1"  # bump when decode_image's verdict on the same bytes changes


@dataclass
class DecodeChecks:
    """check_image's verdicts on the rows of an images table, in order, as columns: an ImageCheck per image was
    10^5 objects kept through validation."""

    width: np.ndarray  # int64, 0 where the image did not decode
    height: np.ndarray
    error: list[str]  # "" where it decoded
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)  # image id -> RGB, the report's candidates

    @classmethod
    def sized(cls, n: int) -> DecodeChecks:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), [""] * n)

    def put(self, k: int, width: int, height: int, error: str) -> None:
        self.width[k], self.height[k], self.error[k] = width, height, error

    def verdict(self, k: int) -> dict:
        """Row k's verdict as the cache records it."""
        return {"width": int(self.width[k]), "height": int(self.height[k]), "error": self.error[k]}


def decode_checks(images: pd.DataFrame, image_path: Callable[[str], Path], thumbnail_ids: AbstractSet[int],
                  executor: ExecutorKind = "process", workers: int | None = None) -> DecodeChecks:
    """check_image for every row of an images table, in order, decoding only content never checked before (and
    the report's thumbnail candidates): a verdict on an image's bytes is cached under their sha256.
    `image_path`: the file of a blob (`ImageFiles.path`). Verdicts go into columns as they come back."""
    from cvpipe.store.digests import DigestCache

    blobs, ids, digests = images["blob"].tolist(), images["image_id"].tolist(), images["digest"].tolist()
    out = DecodeChecks.sized(len(blobs))
    with DigestCache() as cache:
        known = cache.facts((d for b, d in zip(blobs, digests) if b and d), DECODE_FACT)
        todo: list[int] = []  # rows decoded now: no file, content never checked, or a thumbnail wanted
        for k, (b, i, d) in enumerate(zip(blobs, ids, digests)):
            fact = known.get(d) if b else None
            if fact is not None:
                out.put(k, fact["width"], fact["height"], fact["error"])
            if fact is None or int(i) in thumbnail_ids:
                todo.append(k)
        del known
        jobs = [(_locate(image_path, blobs[k]), int(ids[k]) in thumbnail_ids) for k in todo]
        new: dict[str, dict] = {}
        for k, check in zip(todo, track(parallel_map(check_image, jobs, kind=executor, workers=workers,
                                                     chunksize=8), "data_prep: decoding new images", total=len(jobs))):
            out.put(k, check.width, check.height, check.error)
            if check.thumbnail is not None:
                out.thumbnails[int(ids[k])] = check.thumbnail
            if digests[k] and _content_verdict(check):
                new[digests[k]] = out.verdict(k)
            if len(new) >= FACTS_BATCH:  # recorded as they come: not a dict per image at the end
                cache.put_facts(DECODE_FACT, new)
                new = {}
        cache.put_facts(DECODE_FACT, new)
    return out


def thumbnails(ds: DetectionDataset, image_path: Callable[[str], Path], ids: AbstractSet[int]
               ) -> dict[int, np.ndarray]:
    """The report's thumbnails of the images `ids` (as `validate` returns them), decoding only those."""
    rows = ds.images[ds.images["image_id"].isin(ids)]
    return decode_checks(rows, image_path, ids, "serial").thumbnails


def _locate(image_path: Callable[[str], Path], blob: str) -> Path | None:
    """The file of a blob, or None (checked as missing) for an image without one or not in the images entity.
    A stored file that does not hold its content is the store's fault, not the data's: IntegrityError."""
    from cvpipe.store.store import IntegrityError

    try:
        return image_path(blob) if blob else None
    except IntegrityError:
        raise
    except ValueError:
        return None


def _content_verdict(check: ImageCheck) -> bool:
    """Whether a check says something about the bytes (a size, or a decoder's refusal), not about the file
    system (missing, unreadable), and so may be cached under the content digest."""
    return check.error == "" or check.error.startswith(ImageDecodeError.__name__)


def validate(ds: DetectionDataset, image_path: Callable[[str], Path], policy: ValidationPolicy,
             thumbnail_ids: AbstractSet[int] = frozenset(), executor: ExecutorKind = "process",
             workers: int | None = None, source_format: str = "") -> ValidationResult:
    """Apply every rule in order (see the module doc); `source_format` is data_load's (decides inverted_box)."""
    checks = decode_checks(ds.images, image_path, thumbnail_ids, executor, workers)
    v = _Validation(ds, policy)
    v.decoded(checks)
    v.records()
    v.inverted(source_format in CORNER_FORMATS)
    v.geometry()
    v.empty()
    return ValidationResult(DetectionDataset.build(v.images, v.anns, ds.categories), v.findings, checks.thumbnails)


FINDING_COLUMNS = ["step", "rule", "action", "image_id", "ann_id", "detail"]


def write_findings(findings: list[dict], directory: Path) -> None:
    """findings.json (for people and tools) and findings.parquet (a table: one row per affected item)."""
    directory.mkdir(parents=True, exist_ok=True)
    # one finding per line, each by json's C encoder: an indented dump goes through the pure-Python encoder and
    # joined ~1.6 million pieces at 90,000 findings (the data steps' peak memory at 100,000 images)
    encode = _finding_encoder()
    lines = ",\n".join(encode(f) for f in findings)
    (directory / "findings.json").write_text(f"[\n{lines}\n]\n" if findings else "[]\n")
    table = pd.DataFrame(findings, columns=FINDING_COLUMNS)
    table["step"] = table["step"].fillna("")
    table = table.astype({"step": "string", "rule": "string", "action": "string", "image_id": "Int64",
                          "ann_id": "Int64", "detail": "string"})
    table.to_parquet(directory / "findings.parquet", index=False)


def _finding_encoder() -> Callable[[dict], str]:
    """One finding's JSON text as `json.dumps(f, default=str)` writes it, by json's C encoder made once: dumps
    (and JSONEncoder.encode) make a new one per call, which was 1 s of writing 90,000 findings twice."""
    from json import encoder

    c_make_encoder = getattr(encoder, "c_make_encoder", None)  # not in typeshed: json's own private accelerator
    if c_make_encoder is None:  # a Python without it
        return json.JSONEncoder(default=str).encode
    make = c_make_encoder(None, str, encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda f: "".join(make(f, 0))


def read_findings(directory: Path) -> list[dict]:
    """The findings a step stored with its dataset ([] when it stored none)."""
    p = directory / "findings.json"
    return json.loads(p.read_text()) if p.is_file() else []


def summarize_findings(findings: list[dict]) -> list[dict]:
    """Counts per (rule, action), for the report and the run summary."""
    counts: dict[tuple[str, str], int] = {}
    for f in findings:
        counts[(f["rule"], f["action"])] = counts.get((f["rule"], f["action"]), 0) + 1
    return [{"rule": r, "action": a, "count": n} for (r, a), n in sorted(counts.items())]
