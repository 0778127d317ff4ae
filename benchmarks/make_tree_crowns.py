"""A second public data set for the fine-tuning check of issue 21: NEON aerial tree crowns, as Pascal VOC tiles.

    .venv/bin/python benchmarks/make_tree_crowns.py OUT [--wheel deepforest-2.1.0-py3-none-any.whl] [--tile 416]

Source: the PyPI wheel of DeepForest 2.1.0 (MIT; weecology) ships four annotated RGB crops of NEON's airborne
camera mosaics (10 cm pixels; NEON data are CC0) in `deepforest/data/`, with Pascal VOC XML boxes around every
tree crown: 951 boxes, median crown about 40 px. Without --wheel the wheel is fetched with
`pip download deepforest==2.1.0 --no-deps` (PyPI only, the package is never installed); its sha256 is checked.

The images (up to 2299 x 2472 px) are cut into tiles at the model's input scale (`--tile`, 416 = the main job's
img_size), so that a crown keeps its ~40 px instead of shrinking to 7 px in a letterboxed whole image. Rules:
- A box belongs to a tile when at least half of its area lies inside it (`KEEP_SHARE`); it is clipped to the
  tile and shifted by the tile's offset. A box cut to less than half is left out of that tile.
- Held-out test = whole source images, never tiles of an image that also trains: YELL 541000_4977000 (same
  NEON site as training, 13 km away) and the two other sites, OSBS_029 (Florida) and SOAP_061 (California).
  Neighbouring tiles of one image share crowns cut at their edges, lighting and the annotator's hand, so a
  random tile split would score the model on what it trained on.
- Train / val = YELL 528000_4978000: val is its bottom band of `tile` px, train the rest above it (tiles
  overlapping by half: more distinct crops of the one training image). No tile crosses the band's edge.
- Test and val tiles do not overlap: a grid of ceil(side / tile) equal tiles per side, each at most `tile` px
  (never shrunk at the model's input; a crown is counted once, in the tile holding most of it).
- SOAP_061's labels `Alive` / `Dead` are both tree crowns: every box becomes the one class `Tree`.

Writes OUT/JPEGImages/*.png, OUT/Annotations/*.xml (one per tile), OUT/ImageSets/Main/{train,val,test}.txt,
OUT/classes.txt and OUT/tiles.json (the counts per split and source). Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

WHEEL_NAME = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
DATA = "deepforest/data/"
KEEP_SHARE = 0.5  # a box is kept in a tile when at least this share of its area is inside it
CLASS = "Tree"
LABELS = {"Tree": CLASS, "Alive": CLASS, "Dead": CLASS}
TRAIN_SOURCE = "2019_YELL_2_528000_4978000_image_crop2"
TEST_SOURCES = ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061")

Box = tuple[float, float, float, float]  # x1, y1, x2, y2: continuous pixels, (0, 0) the top-left corner
Window = tuple[int, int, int, int]  # x0, y0, x1, y1 of a tile in its source image


@dataclass
class Source:
    name: str
    image: Image.Image
    boxes: list[Box]


def read_voc_boxes(xml: bytes) -> list[Box]:
    """The boxes of a VOC file as continuous pixel boxes (VOC xmin..xmax are 1-based inclusive: x1 = xmin - 1)."""
    boxes = []
    for obj in ET.fromstring(xml).iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in LABELS:
            raise ValueError(f"unexpected label {name!r}: expected one of {sorted(LABELS)}")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError("an <object> without <bndbox>")
        xmin, ymin, xmax, ymax = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    return boxes


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one side: every `stride` px, the last one flush with the end (one tile when short)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def grid_windows(width: int, height: int, tile: int, y0: int = 0) -> list[Window]:
    """Non-overlapping tiles covering the region (0, y0)-(width, height): ceil(side / tile) equal tiles per side."""
    def cuts(start: int, end: int) -> list[int]:
        n = max(1, math.ceil((end - start) / tile))
        return [start + round(k * (end - start) / n) for k in range(n + 1)]

    xs, ys = cuts(0, width), cuts(y0, height)
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(len(ys) - 1) for i in range(len(xs) - 1)]


def overlap_windows(width: int, height: int, tile: int, stride: int) -> list[Window]:
    """Tiles of `tile` px (smaller only where the region is) every `stride` px, covering (0, 0)-(width, height)."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in axis_starts(height, tile, stride) for x in axis_starts(width, tile, stride)]


def boxes_in_window(boxes: list[Box], window: Window, keep_share: float = KEEP_SHARE) -> list[Box]:
    """The boxes with at least keep_share of their area inside the window, clipped to it, in the tile's
    coordinates (shifted by the window's origin)."""
    x0, y0, x1, y1 = window
    out = []
    for bx1, by1, bx2, by2 in boxes:
        cx1, cy1, cx2, cy2 = max(bx1, x0), max(by1, y0), min(bx2, x1), min(by2, y1)
        area = (bx2 - bx1) * (by2 - by1)
        inside = max(0.0, cx2 - cx1) * max(0.0, cy2 - cy1)
        if area > 0 and inside >= keep_share * area:
            out.append((cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0))
    return out


def voc_xml(filename: str, width: int, height: int, boxes: list[Box]) -> bytes:
    """A Pascal VOC annotation (1-based inclusive xmin..xmax, as cvpipe's reader expects) for one tile."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for x1, y1, x2, y2 in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASS
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, edge in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, k).text = f"{edge:g}"
    return ET.tostring(root)


def split_windows(src: Source, split: str, tile: int) -> Iterator[tuple[str, Window]]:
    """(split, window) of every tile of a source: test tiles on a grid; the training image's bottom band of
    `tile` px as val (grid), the rest above it as train (tiles overlapping by half)."""
    w, h = src.image.size
    if split == "test":
        yield from (("test", win) for win in grid_windows(w, h, tile))
        return
    cut = max(h - tile, 0)
    yield from (("val", win) for win in grid_windows(w, h, tile, y0=cut))
    yield from (("train", win) for win in overlap_windows(w, cut, tile, tile // 2))


def write_tiles(sources: dict[str, Source], out: Path, tile: int) -> dict:
    """Cut every source into tiles and write them as a VOC folder with ImageSets/Main; returns the counts."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    counts: dict[str, dict] = {}
    for name, src in sources.items():
        for split, win in split_windows(src, "test" if name in TEST_SOURCES else "train", tile):
            stem = f"{name}_x{win[0]}_y{win[1]}"
            boxes = boxes_in_window(src.boxes, win)
            src.image.crop(win).save(out / "JPEGImages" / f"{stem}.png")
            (out / "Annotations" / f"{stem}.xml").write_bytes(
                voc_xml(f"{stem}.png", win[2] - win[0], win[3] - win[1], boxes))
            lists[split].append(stem)
            c = counts.setdefault(split, {}).setdefault(name, {"tiles": 0, "boxes": 0, "most_boxes_in_a_tile": 0})
            c["tiles"] += 1
            c["boxes"] += len(boxes)
            c["most_boxes_in_a_tile"] = max(c["most_boxes_in_a_tile"], len(boxes))
    for split, stems in lists.items():
        (out / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    (out / "classes.txt").write_text(f"{CLASS}\n")
    summary = {"tile": tile, "keep_share": KEEP_SHARE, "splits": counts,
               "source_boxes": {n: len(s.boxes) for n, s in sources.items()}}
    (out / "tiles.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_wheel(wheel: Path) -> dict[str, Source]:
    """The four annotated images of the wheel (read from the zip by their fixed names; nothing is extracted)."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not that of {WHEEL_NAME} ({WHEEL_SHA256})")
    Image.MAX_IMAGE_PIXELS = None  # 2299 x 2472, above PIL's bomb warning threshold only in old versions
    sources = {}
    with zipfile.ZipFile(wheel) as z:
        for name in (TRAIN_SOURCE, *TEST_SOURCES):
            image = Image.open(io.BytesIO(z.read(f"{DATA}{name}.png"))).convert("RGB")
            sources[name] = Source(name, image, read_voc_boxes(z.read(f"{DATA}{name}.xml")))
    return sources


def fetch_wheel(cache: Path) -> Path:
    """The wheel from PyPI (`pip download`, no dependencies, nothing installed), or a clear exit when offline."""
    cache.mkdir(parents=True, exist_ok=True)
    if (cache / WHEEL_NAME).is_file():
        return cache / WHEEL_NAME
    cmd = [sys.executable, "-m", "pip", "download", "deepforest==2.1.0", "--no-deps", "--only-binary=:all:",
           "-d", str(cache)]
    print("fetching the data:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not (cache / WHEEL_NAME).is_file():
        raise SystemExit(f"could not download {WHEEL_NAME} from PyPI (offline?): {done.stderr.strip()[-300:]}\n"
                         f"get it elsewhere (`pip download deepforest==2.1.0 --no-deps`) and pass --wheel PATH")
    return cache / WHEEL_NAME


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the VOC tiles (created; scratch, not the repository)")
    ap.add_argument("--wheel", type=Path, help=f"a local {WHEEL_NAME} (default: pip download it)")
    ap.add_argument("--tile", type=int, default=416, help="tile side in px (the model's img_size)")
    args = ap.parse_args(argv)
    wheel = args.wheel or fetch_wheel(Path(tempfile.gettempdir()) / "cvpipe-deepforest-wheel")
    summary = write_tiles(read_wheel(wheel), args.out, args.tile)
    print(json.dumps(summary["splits"], indent=1))
    return summary


if __name__ == "__main__":
    main()
