"""data_load's work: read raw data in any supported format and normalise it to the canonical dataset,
with image files stored once per content digest."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cvpipe.data.formats import (
    BoxTable,
    RawDataset,
    detect_format,
    read_coco,
    read_voc,
    read_yolo,
    scale_normalized_boxes,
)
from cvpipe.data.schema import DetectionDataset
from cvpipe.pipeline.executor import ExecutorKind, parallel_map
from cvpipe.progress import track
from cvpipe.store.digests import ChangedWhileReading, DigestCache
from cvpipe.vision import ImageDecodeError, read_header

log = logging.getLogger(__name__)


@dataclass
class FileInfo:
    digest: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


HEADER_FACT = "image_header/v1"  # bump when read_header's answer for the same bytes changes


def read_header_fact(job: tuple[Path, str]) -> FileInfo:
    """Read one image's displayed size (EXIF orientation applied) from its header. The bytes read must be
    the ones digested (`job[1]`): a file that changed in between is an error, never a wrong size."""
    path, expected = job
    try:
        data = path.read_bytes()
    except OSError as e:
        return FileInfo(error=f"missing or unreadable: {e.strerror or e}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        return FileInfo(error="changed while being read: its content is not the content just digested; "
                              "run again once the data stops changing")
    info = FileInfo(digest=digest)
    try:
        header = read_header(data)
        info.width, info.height = header.width, header.height
    except ImageDecodeError as e:  # a corrupt image, recorded for data_prep
        info.error = f"not a readable image: {e}"
    return info


def _digest_or_error(cache: DigestCache, path: Path) -> tuple[str, str]:
    try:
        return cache.digest(path), ""
    except ChangedWhileReading:  # never a finding: the next run sees the file as it is then
        raise
    except OSError as e:  # deleted between listing and reading, unreadable
        return "", f"missing or unreadable: {e.strerror or e}"


def inspect_images(paths: list[Path], executor: ExecutorKind = "process", workers: int | None = None
                   ) -> list[FileInfo]:
    """Digest each image (read only when its inode, size or mtime changed) and its header size (read only for
    content not seen before): what data_load needs of every image, redone only for what changed."""
    with DigestCache() as cache:
        try:  # one batch: changed files are hashed in threads
            digested = [(d, "") for d in cache.digests(paths)]
        except ChangedWhileReading:
            raise
        except OSError:  # some file vanished or is unreadable: find which, one by one
            digested = [_digest_or_error(cache, p) for p in paths]
        known = cache.facts((d for d, _ in digested if d), HEADER_FACT)
        todo = [i for i, (d, err) in enumerate(digested) if not err and d not in known]
        log.info("data_load: %d images, %d new contents to read headers of", len(paths), len(todo))
        fresh = list(track(parallel_map(read_header_fact, [(paths[i], digested[i][0]) for i in todo],
                                        kind=executor, workers=workers),
                           "data_load: reading new images", total=len(todo)))
        cache.put_facts(HEADER_FACT, {f.digest: {"width": f.width, "height": f.height, "error": f.error}
                                      for f in fresh if f.digest})
    by_index = dict(zip(todo, fresh))
    infos = []
    for i, (digest, err) in enumerate(digested):
        if i in by_index:
            infos.append(by_index[i])
        elif err:
            infos.append(FileInfo(error=err))
        else:
            infos.append(FileInfo(digest=digest, **known[digest]))
    return infos


def store_images(paths: list[Path], infos: list[FileInfo], out_dir: Path, stored: AbstractSet[str] = frozenset()
                 ) -> None:
    """Put each digested image in out_dir as <sha256><ext>, as a hard link (no bytes copied; the store copies
    what it does not hold yet, and shares what it does). Names in `stored` (the previous version's) are left
    out: the new version indexes those objects."""
    done: set[str] = set(stored)
    for path, info in zip(paths, infos):
        name = f"{info.digest}{path.suffix.lower()}"
        if info.digest and name not in done:  # a set, not a stat per image: duplicates share one file
            copy_or_link(path, out_dir / name)
            done.add(name)


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
    if not root:
        return fallback
    text, prefix = os.fspath(path), os.fspath(root).rstrip("/") + "/"  # strings: a Path per image cost 3 % of a version
    return text[len(prefix):] if text.startswith(prefix) and os.sep == "/" else _relative_path(path, root, fallback)


def _relative_path(path: Path, root: Path, fallback: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
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
              workers: int | None = None, stored: AbstractSet[str] | None = None
              ) -> tuple[DetectionDataset, list[dict]]:
    """Hash and store every image (but those named in `stored`), fill sizes, and build the canonical dataset;
    problems become findings. `raw.annotations` is emptied once its columns are in the frame (one copy of the
    boxes at a time)."""
    findings = list(raw.findings)
    if not raw.images:
        raise ValueError(_no_images_message(raw))
    paths = [Path(im["path"]) for im in raw.images]
    infos = inspect_images(paths, executor, workers)
    store_images(paths, infos, images_out, stored or frozenset())
    if raw.boxes_normalized:  # YOLO: sizes come from the headers just read
        scale_normalized_boxes(raw, {im["image_id"]: (info.width, info.height) for im, info in zip(raw.images, infos)})
    images = []
    for im, info in zip(raw.images, infos):
        width, height = im["width"] or info.width, im["height"] or info.height
        if info.error.startswith("changed while being read"):
            raise ChangedWhileReading(f"{im['file_name']}: {info.error}")
        if info.error:
            rule = "missing_image" if info.error.startswith("missing") else "corrupt_image"
            findings.append({"rule": rule, "action": "recorded", "image_id": im["image_id"], "ann_id": None,
                             "detail": f"{im['file_name']}: {info.error}"})
        ext = Path(im["file_name"]).suffix.lower()
        images.append({"image_id": im["image_id"], "file_name": im["file_name"], "width": width, "height": height,
                       "digest": info.digest, "blob": f"{info.digest}{ext}" if info.digest else "",
                       "source": _relative_source(im["path"], raw.root, im["file_name"]), "split": "",
                       "extra": json.dumps(im["extra"], sort_keys=True) if im.get("extra") else "{}"})
    anns = raw.annotations.frame()
    raw.annotations = BoxTable()  # the columns are copied into the frame: free them
    orphan = ~anns["image_id"].isin([im["image_id"] for im in images])
    for ann_id, image_id in zip(anns["ann_id"][orphan].tolist(), anns["image_id"][orphan].tolist()):
        findings.append({"rule": "annotation_without_image", "action": "dropped", "image_id": image_id,
                         "ann_id": ann_id, "detail": f"annotation {ann_id} names image {image_id}, "
                                                     f"which the data does not have"})
    return DetectionDataset.build(images, anns[~orphan] if orphan.any() else anns, raw.categories), findings


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a data step builds rows: it does not free them (they are not
    cycles), yet each full collection walks every one of them, and 10^5 images with 650,000 boxes made it
    a third of reading the COCO JSON (5.4 s of CPU against 3.4 s without). Cycles made meanwhile are collected
    when it is back on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    """Hard-link when possible (same content, no extra space), else copy; a symlink is followed either way."""
    try:
        os.link(src, dest)  # follow_symlinks=True: links the file a symlink names, not the link
    except OSError:
        shutil.copyfile(src, dest)
