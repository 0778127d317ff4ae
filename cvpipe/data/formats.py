"""Annotation format readers (COCO JSON, YOLO txt, Pascal VOC XML) into one raw form, and writers.

Conventions, so that the same boxes read the same from every format:
- Boxes are xywh in pixels, continuous coordinates (0,0 is the top-left corner of the top-left pixel).
- YOLO: `class cx cy w h` normalised to the image size; category ids are class index + 1 in the order of
  the classes file (classes.txt, obj.names, or `names` in data.yaml).
- VOC: xmin..xmax are 1-based inclusive pixel indices (the devkit's convention), so x = xmin - 1 and
  w = xmax - xmin + 1; category ids are 1.. in sorted class-name order unless `classes` is given.
- COCO: ids and records as they are; source fields without a column are kept in `extra`.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
Format = Literal["auto", "coco", "yolo", "voc"]


@dataclass
class RawDataset:
    """What a reader found: rows for the canonical schema, plus problems to report (not fatal)."""

    images: list[dict] = field(default_factory=list)  # image_id, file_name, path, width, height, extra
    annotations: list[dict] = field(default_factory=list)  # ann_id, image_id, category_id, x, y, w, h, area, iscrowd, extra
    categories: list[dict] = field(default_factory=list)  # category_id, name, supercategory
    findings: list[dict] = field(default_factory=list)  # rule, action, image_id, ann_id, detail
    format: str = ""
    root: Path | None = None  # the raw data's top folder; `source` columns are paths relative to it
    # YOLO boxes stay normalised (0..1) until the image sizes are known: data_load reads them from the
    # file headers in its process pool, together with hashing, instead of once more here
    boxes_normalized: bool = False


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# ---- detection ----------------------------------------------------------------------------------
def _coco_json(root: Path, annotations: str | None) -> Path | None:
    if annotations:
        p = root / annotations
        if not p.is_file():
            raise FileNotFoundError(f"annotation file not found: {p}")
        return p
    candidates = sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
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
    if any(root.rglob("*.xml")):
        return "voc"
    if any(root.rglob("*.txt")) or (root / "data.yaml").exists():
        return "yolo"
    raise ValueError(f"cannot tell the annotation format of {root}: no COCO json, VOC xml or YOLO txt found; "
                     f"set data_load.format")


# ---- COCO -----------------------------------------------------------------------------------------
def _locate_images(root: Path, json_path: Path, names: list[str], images_dir: str | None) -> dict[str, Path]:
    bases = [root / images_dir] if images_dir else [root / "images", root, json_path.parent / "images",
                                                    json_path.parent, json_path.parent.parent / "images"]
    for base in bases:
        if names and (base / names[0]).is_file():
            return {n: base / n for n in names}
    # last resort: find files by name anywhere below root
    by_name = {p.name: p for p in _image_files(root)}
    return {n: by_name.get(Path(n).name, (bases[0] / n)) for n in names}


def read_coco(root: Path, annotations: str | None = None, images_dir: str | None = None) -> RawDataset:
    json_path = _coco_json(root, annotations)
    if json_path is None:
        raise FileNotFoundError(f"no COCO annotation json in {root}")
    try:
        coco = json.loads(json_path.read_text())
    except ValueError as e:
        raise ValueError(f"{json_path}: not valid JSON: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise ValueError(f"{json_path}: not a COCO instances file (missing {missing})")
    raw = RawDataset(format="coco", root=root)
    paths = _locate_images(root, json_path, [im["file_name"] for im in coco["images"]], images_dir)
    for im in coco["images"]:
        extra = {k: v for k, v in im.items() if k not in ("id", "file_name", "width", "height")}
        raw.images.append({"image_id": int(im["id"]), "file_name": im["file_name"], "path": paths[im["file_name"]],
                           "width": int(im.get("width") or 0), "height": int(im.get("height") or 0), "extra": extra})
    for a in coco["annotations"]:
        bbox = a.get("bbox") or [float("nan")] * 4
        x, y, w, h = (float(v) if v is not None else float("nan") for v in (list(bbox) + [None] * 4)[:4])
        extra = {k: v for k, v in a.items() if k not in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
        raw.annotations.append({"ann_id": int(a["id"]), "image_id": int(a["image_id"]),
                                "category_id": int(a["category_id"]), "x": x, "y": y, "w": w, "h": h,
                                "area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0)),
                                "extra": extra})
    raw.categories = [{"category_id": int(c["id"]), "name": c["name"], "supercategory": c.get("supercategory", "")}
                      for c in coco["categories"]]
    return raw


# ---- YOLO -----------------------------------------------------------------------------------------
def _yolo_classes(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml"):
        p = root / name
        if p.is_file():
            names = (yaml.safe_load(p.read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [names[k] for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    for name in ("classes.txt", "obj.names", "classes.names"):
        p = root / name
        if p.is_file():
            return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return None


def _label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root)
    parts = list(rel.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
        return (root / Path(*parts)).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo(root: Path, classes: list[str] | None = None) -> RawDataset:
    """Boxes come back normalised (`boxes_normalized`): data_load scales them by the header sizes.
    `classes` (index order) overrides the class list found in the data."""
    raw = RawDataset(format="yolo", root=root, boxes_normalized=True)
    classes = classes or _yolo_classes(root)
    if classes is None:
        raise ValueError(f"YOLO data in {root} needs a class list: classes.txt, obj.names or data.yaml with names "
                         f"(or set data_load.classes)")
    raw.categories = [{"category_id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)]
    ann_id = 0
    for image_id, path in enumerate(_image_files(root), start=1):
        rel = path.relative_to(root).as_posix()
        raw.images.append({"image_id": image_id, "file_name": rel, "path": path, "width": 0, "height": 0, "extra": {}})
        label = _label_path(root, path)
        if not label.is_file():
            continue
        for n, line in enumerate(label.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) < 5:
                    raise ValueError("fewer than 5 values")
                cls = int(parts[0])
                cx, cy, bw, bh = (float(v) for v in parts[1:5])
            except ValueError as e:
                raw.findings.append({"rule": "bad_label_line", "action": "dropped", "image_id": image_id,
                                     "ann_id": None, "detail": f"{label.name}:{n}: {line!r} ({e})"})
                continue
            ann_id += 1
            raw.annotations.append({"ann_id": ann_id, "image_id": image_id, "category_id": cls + 1,
                                    "x": cx - bw / 2, "y": cy - bh / 2, "w": bw, "h": bh, "area": bw * bh,
                                    "iscrowd": 0, "extra": {}})
    return raw


def scale_normalized_boxes(raw: RawDataset, sizes: dict[int, tuple[int, int]]) -> None:
    """Turn normalised YOLO boxes into pixels once the image sizes (image_id -> (w, h)) are known."""
    for a in raw.annotations:
        w, h = sizes.get(a["image_id"], (0, 0))
        a["x"], a["w"] = a["x"] * w, a["w"] * w
        a["y"], a["h"] = a["y"] * h, a["h"] * h
        a["area"] = a["w"] * a["h"]
    raw.boxes_normalized = False


# ---- Pascal VOC ------------------------------------------------------------------------------------
def read_voc(root: Path, classes: list[str] | None = None) -> RawDataset:
    raw = RawDataset(format="voc", root=root)
    xmls = sorted(root.rglob("*.xml"))
    docs = []
    for p in xmls:
        try:
            docs.append((p, ET.parse(p).getroot()))
        except ET.ParseError as e:
            raw.findings.append({"rule": "bad_annotation_file", "action": "dropped", "image_id": None, "ann_id": None,
                                 "detail": f"{p.relative_to(root)}: {e}"})
    names = classes or sorted({(o.findtext("name") or "").strip() for _, d in docs for o in d.iter("object")} - {""})
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    raw.categories = [{"category_id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()]
    images_by_name = {p.name: p for p in _image_files(root)}
    ann_id = 0
    for image_id, (p, doc) in enumerate(docs, start=1):
        fname = (doc.findtext("filename") or p.with_suffix(".jpg").name).strip()
        path = images_by_name.get(Path(fname).name, root / "JPEGImages" / fname)
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else fname
        size = doc.find("size")
        w = int(float(size.findtext("width") or 0)) if size is not None else 0
        h = int(float(size.findtext("height") or 0)) if size is not None else 0
        raw.images.append({"image_id": image_id, "file_name": rel, "path": path, "width": w, "height": h,
                           "extra": {"annotation_file": p.relative_to(root).as_posix()}})
        for obj in doc.iter("object"):
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            ann_id += 1
            try:
                xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                xmin = ymin = xmax = ymax = float("nan")
            bw, bh = xmax - xmin + 1, ymax - ymin + 1
            extra = {k: obj.findtext(k) for k in ("difficult", "truncated", "pose") if obj.find(k) is not None}
            raw.annotations.append({"ann_id": ann_id, "image_id": image_id, "category_id": cat_ids.get(name, -1),
                                    "x": xmin - 1, "y": ymin - 1, "w": bw, "h": bh, "area": bw * bh, "iscrowd": 0,
                                    "extra": {**extra, "name": name}})
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
