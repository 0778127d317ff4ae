"""Annotation format readers (COCO JSON, YOLO txt, Pascal VOC XML) into one raw form, and writers.

Conventions, so that the same boxes read the same from every format:
- Boxes are xywh in pixels, continuous coordinates (0,0 is the top-left corner of the top-left pixel).
- YOLO: `class cx cy w h` normalised to the image size; category ids are class index + 1 in the order of
  the classes file (classes.txt, obj.names, or `names` in data.yaml).
- VOC: xmin..xmax are 1-based inclusive pixel indices (the devkit's convention), so x = xmin - 1 and
  w = xmax - xmin + 1. A box given with its corners swapped (xmax < xmin) stays swapped here, with edges
  chosen so that data_prep's `inverted_box` fix (swapping the corners back) gives exactly the intended box.
  Category ids are 1.. in the order of `classes`, else of a class list next to the data (classes.txt,
  labelmap.txt, ...), else of the sorted class names found in the data. `ImageSets/Main/{train,val,test}.txt`
  are recorded per image (extra `imageset`) for data_prep's split_from_source.
- COCO: ids and records as they are; source fields without a column are kept in `extra`.

Every file name taken from the data (COCO `file_name`, VOC `<filename>`, files found by walking the folder)
must name a file inside the data's root, symlinks resolved: anything else is an `unsafe_path` finding, its
image and annotations are dropped, and the file is never opened.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import yaml

from cvpipe.store.paths import InsideCheck, is_inside, safe_relpath

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CLASS_FILES = ("classes.txt", "labelmap.txt", "obj.names", "classes.names")
IMAGESETS = ("train", "val", "test")


BOX_INTS = ("ann_id", "image_id", "category_id", "iscrowd")
BOX_FLOATS = ("x", "y", "w", "h", "area")


class BoxTable:
    """The boxes a reader found, as typed columns instead of a dict per box: 645,899 COCO boxes held as dicts
    (with the parsed JSON they came from) took 480 MB; as columns about 50 MB. Rows go in as dicts (`append`)
    and come out as one DataFrame (`frame`) or, for small data, as dicts again (iteration)."""

    def __init__(self) -> None:
        self.ints: dict[str, array] = {c: array("q") for c in BOX_INTS}
        self.floats: dict[str, array] = {c: array("d") for c in BOX_FLOATS}
        self.extra: list[str] = []  # each box's other source fields as JSON text; "{}" is one shared string
        self._int_columns = tuple(self.ints[c] for c in BOX_INTS)  # in BOX_INTS order, for `append`
        self._float_columns = tuple(self.floats[c] for c in BOX_FLOATS)

    def append(self, row: dict) -> None:
        """Add one box: ann_id, image_id, category_id, x, y, w, h, area, iscrowd (default 0), extra (a dict)."""
        ints = (int(row["ann_id"]), int(row["image_id"]), int(row["category_id"]), int(row.get("iscrowd", 0)))
        floats = (float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]), float(row["area"]))
        extra = json.dumps(row["extra"], sort_keys=True) if row.get("extra") else "{}"
        try:
            for col, v in zip(self._int_columns, ints):
                col.append(v)
        except OverflowError:
            for col in self._int_columns:  # the columns stay the same length
                del col[len(self.extra):]
            raise ValueError(f"annotation {row['ann_id']}: an id does not fit in 64 bits") from None
        for fcol, f in zip(self._float_columns, floats):
            fcol.append(f)
        self.extra.append(extra)

    def extend_coco(self, anns: list) -> None:
        """Add COCO annotation records (decoded JSON), a chunk at a time: column by column when every record is
        plain (about three times faster than `append` per box); otherwise box by box through `append`, which
        raises for the first bad record exactly as reading them one at a time would."""
        try:
            ints, floats, extra = _coco_columns(anns)
        except Exception:  # noqa: BLE001 - whatever it is, the box-by-box path raises it for the right box
            for a in anns:
                self.append(_coco_annotation(a))
            return
        for col, new in zip((*self._int_columns, *self._float_columns), (*ints, *floats)):
            col.extend(new)
        self.extra.extend(extra)

    def __len__(self) -> int:
        return len(self.extra)

    def drop_images(self, image_ids: set[int]) -> list[tuple[int, int]]:
        """Remove the boxes of these images; (ann_id, image_id) of each box removed."""
        import numpy as np

        if not image_ids or not len(self):
            return []
        ids = _view(self.ints["image_id"])
        gone = np.isin(ids, np.fromiter(image_ids, np.int64, len(image_ids)))
        if not gone.any():
            return []
        removed = list(zip(_view(self.ints["ann_id"])[gone].tolist(), ids[gone].tolist()))
        keep = ~gone
        del ids
        for col in (*self._int_columns, *self._float_columns):
            col[:] = array(col.typecode, _view(col)[keep].tobytes())
        self.extra = [e for e, k in zip(self.extra, keep.tolist()) if k]
        return removed

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield {**{c: col[i] for c, col in self.ints.items()}, **{c: col[i] for c, col in self.floats.items()},
                   "extra": json.loads(self.extra[i])}

    def frame(self) -> pd.DataFrame:
        """The boxes as one DataFrame (the arrays' memory is copied once; `extra` stays JSON text)."""
        import pandas as pd

        cols = {c: _view(col) for c, col in (*self.ints.items(), *self.floats.items())}
        return pd.DataFrame({**cols, "extra": pd.array(self.extra, dtype="string")}, copy=True)

    def scale(self, sizes: dict[int, tuple[int, int]]) -> None:
        """Normalised boxes (0..1) to pixels, given each image's (width, height); unknown images get 0 x 0."""
        import numpy as np

        ids = _view(self.ints["image_id"]).tolist()
        w = np.array([sizes.get(i, (0, 0))[0] for i in ids], np.float64)
        h = np.array([sizes.get(i, (0, 0))[1] for i in ids], np.float64)
        f = self.floats
        for c, by in (("x", w), ("w", w), ("y", h), ("h", h)):
            f[c][:] = array("d", (_view(f[c]) * by).tobytes())
        f["area"][:] = array("d", np.abs(_view(f["w"]) * _view(f["h"])).tobytes())


def _view(col: array):
    """A numpy view of a BoxTable column (no copy; an empty column gives an empty array)."""
    import numpy as np

    return np.frombuffer(col, np.int64 if col.typecode == "q" else np.float64)


@dataclass
class RawDataset:
    """What a reader found: rows for the canonical schema, plus problems to report (not fatal)."""

    images: list[dict] = field(default_factory=list)  # image_id, file_name, path, width, height, extra
    annotations: BoxTable = field(default_factory=BoxTable)
    categories: list[dict] = field(default_factory=list)  # category_id, name, supercategory
    findings: list[dict] = field(default_factory=list)  # rule, action, image_id, ann_id, detail
    format: str = ""
    root: Path | None = None  # the raw data's top folder; `source` columns are paths relative to it
    # YOLO boxes stay normalised (0..1) until the image sizes are known: data_load reads them from the
    # file headers in its process pool, together with hashing, instead of once more here
    boxes_normalized: bool = False

    def unsafe(self, what: str, image_id: int | None = None) -> None:
        self.findings.append({"rule": "unsafe_path", "action": "dropped", "image_id": image_id, "ann_id": None,
                              "detail": what})


def _files(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` below root that stay inside it (a symlink out is never followed)."""
    return sorted(p for p in root.rglob(pattern) if p.is_file() and is_inside(root, p))


def _image_files(root: Path) -> list[Path]:
    return [p for p in _files(root, "*") if p.suffix.lower() in IMAGE_SUFFIXES]


def _links_out(root: Path) -> list[Path]:
    """Links below root to an image file or a folder outside it: what a folder walk will not follow, and so
    must report (a quiet skip would look like a smaller data set)."""
    return sorted(p for p in root.rglob("*") if p.is_symlink() and not is_inside(root, p)
                  and (p.suffix.lower() in IMAGE_SUFFIXES or p.is_dir()))


def data_path(root: Path, name: str, base: Path | None = None, inside: InsideCheck | None = None) -> Path:
    """`base / name` for a file name read from the data (default base: root); ValueError, naming the reason,
    unless the name is relative without `..` and the path, symlinks resolved, stays inside root (`inside`: a
    check of many names below root, see InsideCheck)."""
    rel = safe_relpath(str(name).replace("\\", "/"), "file name")
    path = (base or root) / rel
    if not (inside(path) if inside else is_inside(root, path)):
        raise ValueError(f"unsafe file name {name!r}: leads outside the data folder")
    return path


# ---- detection ----------------------------------------------------------------------------------
def _coco_json(root: Path, annotations: str | None) -> Path | None:
    if annotations:
        p = data_path(root, annotations)
        if not p.is_file():
            raise FileNotFoundError(f"annotation file not found: {p}")
        return p
    candidates = [p for p in sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
                  if is_inside(root, p)]
    for p in candidates:
        try:
            with open(p, "rb") as f:
                head = f.read(1 << 16).decode("utf-8", "ignore")
        except OSError:
            continue
        if '"images"' in head or '"annotations"' in head or '"categories"' in head or p.name == "annotations.json":
            return p
    return None


def detect_format(root: Path) -> str:
    if _coco_json(root, None):
        return "coco"
    if _files(root, "*.xml"):
        return "voc"
    if _files(root, "*.txt") or (root / "data.yaml").exists():
        return "yolo"
    raise ValueError(f"cannot tell the annotation format of {root}: no COCO json, VOC xml or YOLO txt found; "
                     f"set data_load.format")


# ---- COCO -----------------------------------------------------------------------------------------
def _image_bases(root: Path, json_path: Path, images_dir: str | None) -> list[Path]:
    if images_dir:
        return [data_path(root, images_dir)]
    bases = [root / "images", root, json_path.parent / "images", json_path.parent, json_path.parent.parent / "images"]
    return [b for b in bases if is_inside(root, b)]


def _locate_images(root: Path, json_path: Path, names: list[str], images_dir: str | None) -> dict[str, Path | str]:
    """file_name -> its path inside root, or the reason it is unsafe (a str)."""
    located: dict[str, Path | str] = {}
    safe: list[str] = []
    inside = InsideCheck(root)
    for n in names:  # the name alone here; where it leads (symlinks) is checked once, below, for its final path
        try:
            safe_relpath(str(n).replace("\\", "/"), "file name")
            safe.append(n)
        except ValueError as e:
            located[n] = str(e)
    bases = _image_bases(root, json_path, images_dir)
    base = next((b for b in bases if safe and (b / safe[0]).is_file()), None)
    by_name = {p.name: p for p in _image_files(root)} if base is None else {}
    for n in safe:  # without a base holding the first image, find files by name anywhere below root
        try:
            located[n] = data_path(root, n, base, inside) if base else \
                by_name.get(Path(n).name, data_path(root, n, bases[0], inside))
        except (ValueError, IndexError) as e:
            located[n] = str(e) or "no image folder inside the data"
    return located


_COCO_FIELDS = frozenset(("id", "image_id", "category_id", "bbox", "area", "iscrowd"))


def _coco_columns(anns: list) -> tuple[list[array], list[array], list[str]]:
    """`_coco_annotation` + `BoxTable.append` for a list of plain records (a 4-number bbox each), column by
    column with the same conversions; raises for anything else, which the caller then reads box by box."""
    boxes = [a.get("bbox") for a in anns]
    if any(type(b) is not list or len(b) != 4 for b in boxes):
        raise ValueError("a bbox that is not 4 values")
    flat = [float(v) for b in boxes for v in b]
    w, h = flat[2::4], flat[3::4]
    ints = [array("q", [int(a[k]) for a in anns]) for k in ("id", "image_id", "category_id")]
    ints.append(array("q", [int(a.get("iscrowd", 0)) for a in anns]))
    area = [float(a["area"]) if "area" in a else bw * bh for a, bw, bh in zip(anns, w, h)]
    floats = [array("d", c) for c in (flat[0::4], flat[1::4], w, h, area)]
    extra = ["{}" if a.keys() <= _COCO_FIELDS else
             json.dumps({k: v for k, v in a.items() if k not in _COCO_FIELDS}, sort_keys=True) for a in anns]
    return ints, floats, extra


def _coco_annotation(a: dict) -> dict:
    bbox = a.get("bbox") or [float("nan")] * 4
    x, y, w, h = (float(v) if v is not None else float("nan") for v in (list(bbox) + [None] * 4)[:4])
    extra = {k: v for k, v in a.items() if k not in _COCO_FIELDS}
    return {"ann_id": int(a["id"]), "image_id": int(a["image_id"]), "category_id": int(a["category_id"]),
            "x": x, "y": y, "w": w, "h": h, "area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0)),
            "extra": extra}


_MISSING = object()
BOX_CHUNK = 4096  # annotation records decoded before they go into the columns together
_WS = re.compile(r"[ \t\n\r]*")


class _JsonStream:
    """A JSON text walked by hand at the top level, each value decoded by json's C scanner: a COCO file's
    `images` and `annotations` arrays come one element at a time, so the file is never held as Python objects
    whole (json.loads of 645,899 boxes held ~480 MB at once; the text itself is 87 MB). Not ijson: its prefix
    strings grow with the nesting depth, and one annotation nested 100,000 deep took gigabytes; json's scanner
    stops at the recursion limit (a RecursionError, turned into a clear error by `read_coco`)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0
        self._decode = json.JSONDecoder().raw_decode

    def _skip(self) -> str:
        self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]  # matches empty too
        return self.text[self.pos:self.pos + 1]

    def _expect(self, char: str) -> None:
        if self._skip() != char:
            raise json.JSONDecodeError(f"expected {char!r}", self.text, self.pos)
        self.pos += 1

    def value(self) -> object:
        self._skip()
        value, self.pos = self._decode(self.text, self.pos)
        return value

    def is_array(self) -> bool:
        return self._skip() == "["

    def elements(self) -> Iterator:
        """The elements of the array that starts here, decoded one at a time."""
        self._expect("[")
        if self._skip() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self._skip() != ",":
                self._expect("]")
                return
            self.pos += 1

    def keys(self) -> Iterator[str]:
        """The top-level object's keys; the caller reads each key's value (`value` or `elements`) before the
        next one. Ends with the text: anything after the object is an error."""
        self._expect("{")
        if self._skip() == "}":
            self.pos += 1
        else:
            while True:
                if self._skip() != '"':
                    raise json.JSONDecodeError("expected a key", self.text, self.pos)
                key, self.pos = json.decoder.scanstring(self.text, self.pos + 1)  # type: ignore[attr-defined]
                self._expect(":")
                yield key
                if self._skip() != ",":
                    self._expect("}")
                    break
                self.pos += 1
        if self._skip():
            raise json.JSONDecodeError("extra data after the object", self.text, self.pos)


def _coco_sections(json_path: Path, boxes: BoxTable) -> dict[str, object]:
    """One pass over a COCO JSON: `images` and `categories` as lists, every annotation straight into `boxes`.
    A section absent is _MISSING; one that is not an array keeps its value (the caller says what is wrong)."""
    sections: dict[str, object] = {"images": _MISSING, "annotations": _MISSING, "categories": _MISSING}
    try:
        stream = _JsonStream(json_path.read_text(encoding="utf-8-sig"))  # a byte-order mark is allowed
        if stream.is_array():  # valid JSON, not a COCO file: say which sections are missing
            stream.value()
            return sections
        for key in stream.keys():
            if key == "annotations" and stream.is_array():
                chunk: list = []
                for a in stream.elements():
                    chunk.append(a)
                    if len(chunk) == BOX_CHUNK:
                        boxes.extend_coco(chunk)
                        chunk = []
                boxes.extend_coco(chunk)
                sections[key] = []
            elif key == "images" and stream.is_array():
                sections[key] = list(stream.elements())
            elif key in sections:
                sections[key] = stream.value()
            else:  # info, licenses, ...: read past
                stream.value()
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON: not UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{json_path}: not valid COCO JSON: a value is nested too deep") from None
    # AttributeError: a record that is not an object; OverflowError: an integer past a float's range
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{json_path}: annotation {len(boxes)}: not a COCO annotation ({e!r})") from None
    return sections


def _check_sections(json_path: Path, sections: dict[str, object]) -> None:
    missing = [k for k, v in sections.items() if v is _MISSING]
    if missing:
        raise ValueError(f"{json_path}: not a COCO instances file (missing {missing})")
    wrong = [k for k, v in sections.items() if not isinstance(v, list)]
    if wrong:
        raise ValueError(f"{json_path}: not a COCO instances file ({', '.join(wrong)}: not a list)")


def read_coco(root: Path, annotations: str | None = None, images_dir: str | None = None) -> RawDataset:
    json_path = _coco_json(root, annotations)
    if json_path is None:
        raise FileNotFoundError(f"no COCO annotation json in {root}")
    raw = RawDataset(format="coco", root=root)
    sections = _coco_sections(json_path, raw.annotations)
    _check_sections(json_path, sections)
    images, categories = cast(list, sections["images"]), cast(list, sections["categories"])
    try:
        return _coco_rows(raw, json_path, images, categories, images_dir)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{json_path}: an image or category record is not COCO's ({e!r})") from None


def _coco_rows(raw: RawDataset, json_path: Path, images: list, categories: list,
               images_dir: str | None) -> RawDataset:
    """The image and category rows (the boxes are in raw already); unsafe image paths become findings."""
    root = cast(Path, raw.root)
    paths = _locate_images(root, json_path, [str(im["file_name"]) for im in images], images_dir)
    unsafe_ids = set()
    for im in images:
        path = paths[str(im["file_name"])]
        if isinstance(path, str):
            raw.unsafe(f"image {im['id']}: {path}; not read", int(im["id"]))
            unsafe_ids.add(int(im["id"]))
            continue
        extra = {k: v for k, v in im.items() if k not in ("id", "file_name", "width", "height")}
        raw.images.append({"image_id": int(im["id"]), "file_name": im["file_name"], "path": path,
                           "width": int(im.get("width") or 0), "height": int(im.get("height") or 0), "extra": extra})
    for ann_id, image_id in raw.annotations.drop_images(unsafe_ids):
        raw.findings.append({"rule": "unsafe_path", "action": "dropped", "image_id": image_id, "ann_id": ann_id,
                             "detail": "annotation of an image with an unsafe file name"})
    raw.categories = [{"category_id": int(c["id"]), "name": c["name"], "supercategory": c.get("supercategory", "")}
                      for c in categories]
    return raw


# ---- class lists (YOLO, VOC) ----------------------------------------------------------------------
def _names_from_yaml(p: Path) -> list[str] | None:
    names = (yaml.safe_load(p.read_text()) or {}).get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def class_list_file(root: Path) -> list[str] | None:
    """The class order the data ships with: `names` of data.yaml / dataset.yaml, else one name per line of
    classes.txt, labelmap.txt (CVAT's `name:color::` lines; `#` comments), obj.names or classes.names."""
    for name in ("data.yaml", "dataset.yaml"):
        p = root / name
        if p.is_file() and is_inside(root, p) and (names := _names_from_yaml(p)):
            return names
    for name in CLASS_FILES:
        p = root / name
        if p.is_file() and is_inside(root, p):
            lines = [line.strip() for line in p.read_text().splitlines()]
            names = [line.split(":")[0].strip() if name == "labelmap.txt" else line
                     for line in lines if line and not line.startswith("#")]
            if names and names[0] == "background" and name == "labelmap.txt":
                names = names[1:]  # CVAT / TF labelmaps list the background class first
            return names
    return None


# ---- YOLO -----------------------------------------------------------------------------------------
def _label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root)
    parts = list(rel.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
        return (root / Path(*parts)).with_suffix(".txt")
    return image.with_suffix(".txt")


def _yolo_line(line: str) -> tuple[int, float, float, float, float]:
    parts = line.split()
    if len(parts) < 5:
        raise ValueError("fewer than 5 values")
    cx, cy, bw, bh = (float(v) for v in parts[1:5])
    return int(parts[0]), cx, cy, bw, bh


def _read_yolo_labels(raw: RawDataset, label: Path, image_id: int) -> None:
    for n, line in enumerate(label.read_text().splitlines(), start=1):
        if not line.split():
            continue
        try:
            cls, cx, cy, bw, bh = _yolo_line(line)
        except ValueError as e:
            raw.findings.append({"rule": "bad_label_line", "action": "dropped", "image_id": image_id,
                                 "ann_id": None, "detail": f"{label.name}:{n}: {line!r} ({e})"})
            continue
        # a negative width stays negative (x = the right edge): data_prep's inverted_box rule decides
        raw.annotations.append({"ann_id": len(raw.annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "x": cx - bw / 2, "y": cy - bh / 2, "w": bw, "h": bh, "area": abs(bw * bh),
                                "iscrowd": 0, "extra": {}})


def read_yolo(root: Path, classes: list[str] | None = None) -> RawDataset:
    """Boxes come back normalised (`boxes_normalized`): data_load scales them by the header sizes.
    `classes` (index order) overrides the class list found in the data."""
    raw = RawDataset(format="yolo", root=root, boxes_normalized=True)
    classes = classes or class_list_file(root)
    if classes is None:
        raise ValueError(f"YOLO data in {root} needs a class list: classes.txt, obj.names or data.yaml with names "
                         f"(or set data_load.classes)")
    raw.categories = [{"category_id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)]
    for link in _links_out(root):
        raw.unsafe(f"{link.relative_to(root).as_posix()}: a link leading outside the data folder; not read")
    for image_id, path in enumerate(_image_files(root), start=1):
        rel = path.relative_to(root).as_posix()
        raw.images.append({"image_id": image_id, "file_name": rel, "path": path, "width": 0, "height": 0, "extra": {}})
        label = _label_path(root, path)
        if label.is_file() and is_inside(root, label):
            _read_yolo_labels(raw, label, image_id)
    return raw


def scale_normalized_boxes(raw: RawDataset, sizes: dict[int, tuple[int, int]]) -> None:
    """Turn normalised YOLO boxes into pixels once the image sizes (image_id -> (w, h)) are known."""
    raw.annotations.scale(sizes)
    raw.boxes_normalized = False


# ---- Pascal VOC ------------------------------------------------------------------------------------
def _voc_edges(lo: float, hi: float) -> tuple[float, float]:
    """1-based inclusive pixel indices -> continuous edges. Swapped corners stay swapped, with the edges
    of the pixels they name, so that swapping them back gives the intended box exactly."""
    return (lo - 1, hi) if lo <= hi else (lo, hi - 1)


def _voc_object(obj: ET.Element, ann_id: int, image_id: int, cat_ids: dict[str, int]) -> dict:
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    try:
        if box is None:
            raise ValueError("no <bndbox>")
        # a missing coordinate is float(""): a ValueError, an invalid box like the rest
        xmin, ymin, xmax, ymax = (float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        xmin = ymin = xmax = ymax = float("nan")
    x1, x2 = _voc_edges(xmin, xmax)
    y1, y2 = _voc_edges(ymin, ymax)
    extra = {k: obj.findtext(k) for k in ("difficult", "truncated", "pose") if obj.find(k) is not None}
    return {"ann_id": ann_id, "image_id": image_id, "category_id": cat_ids.get(name, -1), "x": x1, "y": y1,
            "w": x2 - x1, "h": y2 - y1, "area": abs((x2 - x1) * (y2 - y1)), "iscrowd": 0,
            "extra": {**extra, "name": name}}


def voc_imagesets(root: Path) -> tuple[dict[str, str], list[str]]:
    """VOC ids (file stems) -> split from every ImageSets/Main/{train,val,test}.txt below root, and the ids
    listed in more than one split (those get none)."""
    split_of: dict[str, str] = {}
    conflicts: set[str] = set()
    for main in (p for p in root.rglob("Main") if p.parent.name == "ImageSets" and is_inside(root, p)):
        for split in IMAGESETS:
            listed = main / f"{split}.txt"
            if not (listed.is_file() and is_inside(root, listed)):
                continue
            for line in listed.read_text().splitlines():
                stem = line.split()[0] if line.split() else ""
                if stem and split_of.setdefault(stem, split) != split:
                    conflicts.add(stem)
    for stem in conflicts:
        split_of.pop(stem, None)
    return split_of, sorted(conflicts)


def _voc_class_ids(root: Path, docs: list, classes: list[str] | None) -> dict[str, int]:
    names = classes or class_list_file(root)
    if names is None:
        names = sorted({(o.findtext("name") or "").strip() for _, d in docs for o in d.iter("object")} - {""})
        log.warning("VOC data without a class list: ids follow the sorted class names found (%s); add classes.txt "
                    "or set data_load.classes for ids that stay the same across loads", ", ".join(names[:10]))
    return {n: i + 1 for i, n in enumerate(names)}


def _parse_voc_files(raw: RawDataset, root: Path) -> list[tuple[Path, ET.Element]]:
    docs = []
    for p in _files(root, "*.xml"):
        try:
            docs.append((p, ET.parse(p).getroot()))
        except ET.ParseError as e:
            raw.findings.append({"rule": "bad_annotation_file", "action": "dropped", "image_id": None, "ann_id": None,
                                 "detail": f"{p.relative_to(root)}: {e}"})
    return docs


def _voc_image(root: Path, p: Path, doc: ET.Element, images_by_name: dict[str, Path]) -> Path:
    """The image an annotation file names; ValueError when the name is unsafe."""
    fname = (doc.findtext("filename") or p.with_suffix(".jpg").name).strip()
    data_path(root, fname)  # the name itself must be safe, even if a file of that base name exists
    return images_by_name.get(Path(fname).name) or data_path(root, fname, root / "JPEGImages")


def read_voc(root: Path, classes: list[str] | None = None) -> RawDataset:
    raw = RawDataset(format="voc", root=root)
    docs = _parse_voc_files(raw, root)
    cat_ids = _voc_class_ids(root, docs, classes)
    raw.categories = [{"category_id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()]
    images_by_name = {p.name: p for p in _image_files(root)}
    split_of, conflicts = voc_imagesets(root)
    for stem in conflicts:
        raw.findings.append({"rule": "imageset_conflict", "action": "kept", "image_id": None, "ann_id": None,
                             "detail": f"{stem} is listed in more than one of ImageSets/Main/{{train,val,test}}.txt"})
    for image_id, (p, doc) in enumerate(docs, start=1):
        try:
            path = _voc_image(root, p, doc, images_by_name)
        except ValueError as e:
            raw.unsafe(f"{p.relative_to(root).as_posix()}: {e}; its image and boxes are not read", image_id)
            continue
        size = doc.find("size")
        w = int(float(size.findtext("width") or 0)) if size is not None else 0
        h = int(float(size.findtext("height") or 0)) if size is not None else 0
        extra = {"annotation_file": p.relative_to(root).as_posix()}
        if split_of.get(p.stem) or split_of.get(path.stem):
            extra["imageset"] = split_of.get(p.stem) or split_of[path.stem]
        raw.images.append({"image_id": image_id, "file_name": path.relative_to(root).as_posix(), "path": path,
                           "width": w, "height": h, "extra": extra})
        for obj in doc.iter("object"):
            raw.annotations.append(_voc_object(obj, len(raw.annotations) + 1, image_id, cat_ids))
    return raw


# ---- writers (export; also used by tests to make the same boxes in every format) ------------------
def write_yolo(ds, image_paths: dict[int, Path], root: Path) -> None:
    """Write a DetectionDataset as YOLO: images/, labels/, classes.txt (class order = category id order)."""
    cats = ds.categories.sort_values("category_id")
    index = {int(c): i for i, c in enumerate(cats["category_id"])}
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(cats["name"]) + "\n")
    for im in ds.images.itertuples():
        src = image_paths[int(im.image_id)]
        (root / "images" / src.name).write_bytes(src.read_bytes())
        rows = ds.annotations[ds.annotations["image_id"] == im.image_id]
        lines = [f"{index[int(a.category_id)]} {(a.x + a.w / 2) / im.width:.8f} {(a.y + a.h / 2) / im.height:.8f} "
                 f"{a.w / im.width:.8f} {a.h / im.height:.8f}" for a in rows.itertuples()]
        (root / "labels" / f"{src.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def write_voc(ds, image_paths: dict[int, Path], root: Path) -> None:
    """Write a DetectionDataset as Pascal VOC: JPEGImages/, Annotations/*.xml."""
    names = dict(zip(ds.categories["category_id"], ds.categories["name"]))
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for im in ds.images.itertuples():
        src = image_paths[int(im.image_id)]
        (root / "JPEGImages" / src.name).write_bytes(src.read_bytes())
        doc = ET.Element("annotation")
        ET.SubElement(doc, "filename").text = src.name
        size = ET.SubElement(doc, "size")
        for k, v in (("width", im.width), ("height", im.height), ("depth", 3)):
            ET.SubElement(size, k).text = str(int(v))
        for a in ds.annotations[ds.annotations["image_id"] == im.image_id].itertuples():
            obj = ET.SubElement(doc, "object")
            ET.SubElement(obj, "name").text = names[a.category_id]
            ET.SubElement(obj, "difficult").text = "0"
            box = ET.SubElement(obj, "bndbox")
            for k, v in (("xmin", a.x + 1), ("ymin", a.y + 1), ("xmax", a.x + a.w), ("ymax", a.y + a.h)):
                ET.SubElement(box, k).text = f"{v:.4f}"
        ET.ElementTree(doc).write(root / "Annotations" / f"{src.stem}.xml")
