"""The COCO reader streams its JSON into typed columns: memory per box stays small, and a malformed file gets a
clear error naming what is wrong (never a crash or a half-read dataset)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.data.formats import BoxTable, read_coco

N_BOXES = 30_000


def coco_folder(root: Path, n_boxes: int, **override) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(root / "images" / "a.jpg")
    coco = {"info": {"description": "test"},
            "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1 + i % 3, "bbox": [1.5, 2.0, 10.0, 8.25],
                             "area": 82.5, "iscrowd": 0, "segmentation": [[1, 2, 3, 4, 5, 6]]}
                            for i in range(n_boxes)],
            "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]}
    coco.update(override)
    (root / "annotations.json").write_text(json.dumps({k: v for k, v in coco.items() if v is not None}))
    return root


def test_many_boxes_are_read_in_little_memory(tmp_path):
    root = coco_folder(tmp_path / "d", N_BOXES)
    tracemalloc.start()
    raw = read_coco(root)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    per_box = peak / N_BOXES
    print(f"peak {peak / 2**20:.1f} MiB for {N_BOXES} boxes: {per_box:.0f} B per box")
    # json.loads of the whole file took ~1,000 B per box here; streamed into columns ~320 (the file's text is
    # ~150 of it; each box's segmentation is kept as JSON text in `extra`)
    assert per_box < 500
    frame = raw.annotations.frame()
    assert len(frame) == N_BOXES and frame["ann_id"].tolist()[:3] == [1, 2, 3]
    assert frame[["x", "y", "w", "h", "area"]].iloc[0].tolist() == [1.5, 2.0, 10.0, 8.25, 82.5]
    assert json.loads(frame["extra"][0]) == {"segmentation": [[1, 2, 3, 4, 5, 6]]}


@pytest.mark.parametrize("text, says", [
    ('{"images": [], "annotations": [', "not valid JSON"),
    (b'{"images": [], "annotations": [], "categories": ["\xff"]}', "not valid JSON"),
    ('{"images": [], "annotations": []}', "missing ['categories']"),
    ('{"annotations": [], "categories": []}', "missing ['images']"),
    ('{"images": [], "categories": []}', "missing ['annotations']"),
    ('{"images": 5, "annotations": [], "categories": []}', "images: not a list"),
    ('[1, 2, 3]', "missing ['images', 'annotations', 'categories']"),
    ('{"images": [], "annotations": [], "categories": []} []', "extra data"),
    ('{"images": [], "annotations": [{"image_id": 1}], "categories": []}', "annotation 0: not a COCO annotation"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "not COCO's"),
    ('{"images": [], "annotations": [], "categories": [7]}', "not COCO's"),
    ('{"images": [], "annotations": [{"id": 1, "junk": ' + "[" * 100_000 + "]" * 100_000 + '}], "categories": []}',
     "nested too deep"),
])
def test_a_malformed_coco_file_gets_a_clear_error(tmp_path, text, says):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as e:
        read_coco(tmp_path)
    assert says in str(e.value) and "annotations.json" in str(e.value)


def test_a_byte_order_mark_is_read_and_unsafe_images_lose_their_boxes(tmp_path):
    root = coco_folder(tmp_path / "d", 4)
    coco = json.loads((root / "annotations.json").read_text())
    coco["images"].append({"id": 2, "file_name": "../../etc/passwd", "width": 5, "height": 5})
    coco["annotations"][1]["image_id"] = 2
    (root / "annotations.json").write_text("\ufeff" + json.dumps(coco), encoding="utf-8")
    raw = read_coco(root)
    assert [im["image_id"] for im in raw.images] == [1]
    assert [a["ann_id"] for a in raw.annotations] == [1, 3, 4]
    assert [(f["rule"], f["image_id"], f["ann_id"]) for f in raw.findings] == [
        ("unsafe_path", 2, None), ("unsafe_path", 2, 2)]


def test_an_id_too_big_for_64_bits_is_refused_and_the_columns_stay_aligned():
    table = BoxTable()
    row = {"ann_id": 1, "image_id": 1, "category_id": 1, "x": 0, "y": 0, "w": 1, "h": 1, "area": 1, "extra": {}}
    table.append(row)
    for column in ("ann_id", "category_id"):  # the first column, and one after columns that took the box
        with pytest.raises(ValueError, match="64 bits"):
            table.append({**row, column: 2**70})
    assert len(table) == 1 and all(len(c) == 1 for c in [*table.ints.values(), *table.floats.values()])


def test_normalised_boxes_scale_per_image_and_iterate_back_as_rows():
    table = BoxTable()
    for i, image_id in enumerate((1, 2, 3)):
        table.append({"ann_id": i + 1, "image_id": image_id, "category_id": 1, "x": 0.25, "y": 0.5, "w": -0.5,
                      "h": 0.25, "area": 0.125, "extra": {"k": i}})
    table.scale({1: (100, 200), 2: (10, 20)})  # image 3's size is unknown: 0 x 0
    rows = list(table)
    assert [(r["x"], r["y"], r["w"], r["h"], r["area"]) for r in rows] == [
        (25.0, 100.0, -50.0, 50.0, 2500.0), (2.5, 10.0, -5.0, 5.0, 25.0), (0.0, 0.0, -0.0, 0.0, 0.0)]
    assert [r["extra"] for r in rows] == [{"k": 0}, {"k": 1}, {"k": 2}]
    assert np.array_equal(table.frame()["image_id"].to_numpy(), [1, 2, 3])
