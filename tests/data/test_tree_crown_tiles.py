"""benchmarks/make_tree_crowns.py: large VOC images cut into tiles at the model's input scale (issue 21's second
data set). On a synthetic image whose boxes are filled rectangles of distinct colours: every box of every tile,
read back by cvpipe's own VOC reader, must frame its rectangle's pixels in the tile (offset, clipping and the
VOC 1-based convention), the keep-half rule holds, and the held-out image never trains."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.data.formats import read_voc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import make_tree_crowns as mtc  # noqa: E402

TILE = 100


def synthetic(name: str, width: int, height: int, rng: np.random.Generator, n: int, first_colour: int = 0
              ) -> tuple[mtc.Source, dict]:
    """An image of grey noise-free background with n non-overlapping filled rectangles (one colour each), written
    as a VOC file and read back with the script's own reader; colour -> box."""
    pixels = np.full((height, width, 3), 40, np.uint8)
    root = ET.Element("annotation")
    colours: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}
    taken = np.zeros((height, width), bool)
    while len(colours) < n:
        w, h = (int(v) for v in rng.integers(8, 30, 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if taken[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1].any():
            continue
        taken[y:y + h, x:x + w] = True
        colour = (100 + first_colour + len(colours), 200, 60)  # distinct across both images
        pixels[y:y + h, x:x + w] = colour
        colours[colour] = (x, y, x + w, y + h)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "Dead" if len(colours) % 2 else "Tree"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):  # VOC: 1-based inclusive
            ET.SubElement(bb, k).text = str(v)
    boxes = mtc.read_voc_boxes(ET.tostring(root))
    assert boxes == [(float(a), float(b), float(c), float(d)) for a, b, c, d in colours.values()]
    return mtc.Source(name, Image.fromarray(pixels), boxes), colours


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    rng = np.random.default_rng(0)
    train, train_colours = synthetic(mtc.TRAIN_SOURCE, 330, 290, rng, 40)
    test, test_colours = synthetic(mtc.TEST_SOURCES[0], 250, 210, rng, 25, first_colour=50)
    out = tmp_path_factory.mktemp("tiles")
    summary = mtc.write_tiles({train.name: train, test.name: test}, out, TILE)
    return out, summary, {**train_colours, **test_colours}, {train.name: train, test.name: test}


def tile_origin(stem: str) -> tuple[str, int, int]:
    name, x, y = stem.rsplit("_", 2)
    return name, int(x[1:]), int(y[1:])


def test_every_tile_box_frames_its_rectangle(tiled):
    out, _, colours, _ = tiled
    raw = read_voc(out, ["Tree"])  # cvpipe's reader: what data_load will see
    assert not raw.findings
    by_image: dict[int, list[dict]] = {}
    for a in raw.annotations:
        by_image.setdefault(a["image_id"], []).append(a)
    checked = 0
    for im in raw.images:
        tile = np.asarray(Image.open(im["path"]))
        assert (im["width"], im["height"]) == (tile.shape[1], tile.shape[0])
        name, x0, y0 = tile_origin(Path(im["file_name"]).stem)
        for a in by_image.get(im["image_id"], []):
            assert a["category_id"] == 1  # Dead / Alive / Tree are one class
            x, y, w, h = (int(round(a[k])) for k in ("x", "y", "w", "h"))
            inside = tile[y:y + h, x:x + w].reshape(-1, 3)
            colour = tuple(int(c) for c in inside[0])
            assert (inside == colour).all(), f"{im['file_name']}: box {x, y, w, h} does not frame one rectangle"
            sx1, sy1, sx2, sy2 = colours[colour]  # the source box, clipped to the tile, in tile coordinates
            assert (x, y, x + w, y + h) == (max(sx1, x0) - x0, max(sy1, y0) - y0,
                                            min(sx2, x0 + tile.shape[1]) - x0, min(sy2, y0 + tile.shape[0]) - y0)
            checked += 1
    assert checked > 60


def test_a_box_belongs_to_a_tile_when_half_of_it_is_inside():
    window = (100, 0, 200, 100)
    assert mtc.boxes_in_window([(90, 10, 110, 20)], window) == [(0, 10, 10, 20)]  # half inside: kept, clipped
    assert mtc.boxes_in_window([(89, 10, 109, 20)], window) == []  # 45 % inside
    assert mtc.boxes_in_window([(150, 50, 160, 60)], window) == [(50, 50, 60, 60)]  # shifted by the origin


def test_held_out_image_only_in_test_and_each_of_its_boxes_counted_once(tiled):
    out, summary, _, sources = tiled
    lists = {s: (out / "ImageSets/Main" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert lists["test"] and all(s.startswith(mtc.TEST_SOURCES[0]) for s in lists["test"])
    assert not any(s.startswith(mtc.TEST_SOURCES[0]) for s in lists["train"] + lists["val"])
    test_source = sources[mtc.TEST_SOURCES[0]]
    assert summary["splits"]["test"][test_source.name]["boxes"] == len(test_source.boxes)  # grid: no overlap here
    covered = np.zeros(test_source.image.size[::-1], int)
    for stem in lists["test"]:
        _, x0, y0 = tile_origin(stem)
        w, h = Image.open(out / "JPEGImages" / f"{stem}.png").size
        assert w <= TILE and h <= TILE
        covered[y0:y0 + h, x0:x0 + w] += 1
    assert (covered == 1).all()  # test tiles tile the image exactly


def test_val_band_does_not_overlap_train(tiled):
    out, _, _, sources = tiled
    height = sources[mtc.TRAIN_SOURCE].image.size[1]
    lists = {s: (out / "ImageSets/Main" / f"{s}.txt").read_text().split() for s in ("train", "val")}
    val_top = min(tile_origin(s)[2] for s in lists["val"])
    assert val_top == height - TILE
    for stem in lists["train"]:
        _, _, y0 = tile_origin(stem)
        assert y0 + Image.open(out / "JPEGImages" / f"{stem}.png").size[1] <= val_top
