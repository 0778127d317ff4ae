"""data_load's work: read raw data in any supported format and normalise it to the canonical dataset,
with image files stored once per content digest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cvpipe.data.formats import RawDataset, detect_format, read_coco, read_voc, read_yolo, scale_normalized_boxes
from cvpipe.data.schema import DetectionDataset
from cvpipe.pipeline.executor import ExecutorKind, parallel_map
from cvpipe.progress import track
from cvpipe.vision import ImageDecodeError, read_header

log = logging.getLogger(__name__)


@dataclass
class FileInfo:
    digest: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


def inspect_and_store(path: Path, out_dir: Path) -> FileInfo:
    """Hash an image file, read its displayed size (EXIF orientation applied) from the header, copy it to
    out_dir as <sha256><ext> (once)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return FileInfo(error=f"missing or unreadable: {e.strerror or e}")
    digest = hashlib.sha256(data).hexdigest()
    info = FileInfo(digest=digest)
    try:
        header = read_header(data)
        info.width, info.height = header.width, header.height
    except ImageDecodeError as e:  # a corrupt image, recorded for data_prep
        info.error = f"not a readable image: {e}"
    dest = out_dir / f"{digest}{path.suffix.lower()}"
    if not dest.exists():
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return info


def read_raw(root: Path, fmt: str = "auto", annotations: str | None = None, images_dir: str | None = None,
             classes: list[str] | None = None) -> RawDataset:
    fmt = detect_format(root) if fmt == "auto" else fmt
    log.info("reading %s data from %s", fmt, root)
    if fmt == "coco":
        return read_coco(root, annotations, images_dir)
    if fmt == "voc":
        return read_voc(root, classes)
    if fmt == "yolo":
        return read_yolo(root, classes)
    raise ValueError(f"unknown format {fmt!r}: use auto, coco, yolo or voc")


def _relative_source(path: Path, root: Path | None, fallback: str) -> str:
    """The image's path inside the raw data (what `source` records)."""
    try:
        return Path(path).relative_to(root).as_posix() if root else fallback
    except ValueError:
        return fallback


def _no_images_message(raw: RawDataset) -> str:
    unsafe = [f["detail"] for f in raw.findings if f["rule"] == "unsafe_path" and f["ann_id"] is None]
    where = f"{raw.format} data in {raw.root}"
    if not unsafe:
        return f"no images found in the {where}"
    return (f"no usable images in the {where}: every image ({len(unsafe)}) was dropped as an unsafe path (a name "
            f"or link leading outside the data folder), e.g. {unsafe[0]}")


def normalise(raw: RawDataset, images_out: Path, executor: ExecutorKind = "process",
              workers: int | None = None) -> tuple[DetectionDataset, list[dict]]:
    """Hash and store every image, fill sizes, and build the canonical dataset; problems become findings."""
    findings = list(raw.findings)
    if not raw.images:
        raise ValueError(_no_images_message(raw))
    work = partial(inspect_and_store, out_dir=images_out)
    infos = list(track(parallel_map(work, [im["path"] for im in raw.images], kind=executor, workers=workers),
                       "data_load: hashing images", total=len(raw.images)))
    if raw.boxes_normalized:  # YOLO: sizes come from the headers just read
        scale_normalized_boxes(raw, {im["image_id"]: (info.width, info.height) for im, info in zip(raw.images, infos)})
    images = []
    for im, info in zip(raw.images, infos):
        width, height = im["width"] or info.width, im["height"] or info.height
        if info.error:
            rule = "missing_image" if info.error.startswith("missing") else "corrupt_image"
            findings.append({"rule": rule, "action": "recorded", "image_id": im["image_id"], "ann_id": None,
                             "detail": f"{im['file_name']}: {info.error}"})
        ext = Path(im["file_name"]).suffix.lower()
        images.append({"image_id": im["image_id"], "file_name": im["file_name"], "width": width, "height": height,
                       "digest": info.digest, "blob": f"{info.digest}{ext}" if info.digest else "",
                       "source": _relative_source(im["path"], raw.root, im["file_name"]), "split": "",
                       "extra": json.dumps(im.get("extra") or {}, sort_keys=True)})
    known = {im["image_id"] for im in images}
    anns = []
    for a in raw.annotations:
        if a["image_id"] not in known:
            findings.append({"rule": "annotation_without_image", "action": "dropped", "image_id": a["image_id"],
                             "ann_id": a["ann_id"], "detail": f"annotation {a['ann_id']} names image {a['image_id']}, "
                                                              f"which the data does not have"})
            continue
        anns.append({**a, "extra": json.dumps(a.get("extra") or {}, sort_keys=True)})
    return DetectionDataset.build(images, anns, raw.categories), findings


SOURCE_INFO = "source.json"


def write_source_info(dataset_dir: Path, info: dict) -> None:
    """What data_load read (source, format, content digest), stored with the dataset."""
    (dataset_dir / SOURCE_INFO).write_text(json.dumps(info, indent=1, sort_keys=True))


def read_source_info(dataset_dir: Path) -> dict:
    p = dataset_dir / SOURCE_INFO
    return json.loads(p.read_text()) if p.is_file() else {}


def sweep_unreferenced(images_out: Path, ds: DetectionDataset) -> None:
    """Remove stored files no image row points at (e.g. corrupt files kept by hash only)."""
    wanted = set(ds.images["blob"])
    for p in images_out.iterdir():
        if p.name not in wanted:
            p.unlink()


def copy_or_link(src: Path, dest: Path) -> None:
    """Hard-link when possible (same content, no extra space), else copy."""
    real = Path(os.path.realpath(src))
    try:
        os.link(real, dest)
    except OSError:
        shutil.copyfile(real, dest)
