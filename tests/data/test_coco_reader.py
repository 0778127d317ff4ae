"""The COCO reader streams its JSON into typed columns: memory per box stays small, and a malformed file gets a
clear error naming what is wrong (never a crash or a half-read dataset)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cvpipe.data.formats import BoxTable, _coco_annotation, read_coco

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
    ('{"images": [], "annotations": [5], "categories": []}', "annotation 0: not a COCO annotation"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}, [1, 2]], '
     '"categories": []}', "annotation 1: not a COCO annotation"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}, {"id": 2, '
     '"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 1' + "0" * 400 + ']}], "categories": []}',
     "annotation 1: not a COCO annotation"),
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


_VALUES = st.one_of(st.integers(-5, 2**64), st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.sampled_from(["7", "1.5", " 2 ", "x", ""]), st.lists(st.integers(0, 3), max_size=2))


_NUMBERS = st.one_of(st.integers(-5, 2**40), st.floats(-1e6, 1e6), st.booleans(), st.sampled_from(["7", " 2 ", "1.5"]))


@st.composite
def _records(draw) -> list:
    """COCO annotation records: plain ones with what the column path takes (optional fields missing, extra
    fields, numbers as strings or booleans, NaN in a box), and now and then an odd one (a field missing, a bbox
    of another length or type, an id past 64 bits, a record that is not an object)."""
    out: list = []
    for i in range(draw(st.integers(0, 8))):
        rec = {"id": i + 1, "image_id": 1, "category_id": 2, "area": 12.0, "iscrowd": 0,
               "bbox": [draw(st.one_of(_NUMBERS, st.just(float("nan")))) for _ in range(4)]}
        for key in draw(st.lists(st.sampled_from(["area", "iscrowd"]), max_size=2, unique=True)):
            del rec[key]
        for key in draw(st.lists(st.sampled_from(["id", "category_id", "area", "iscrowd", "score"]), max_size=2)):
            rec[key] = draw(_NUMBERS)
        if draw(st.booleans()):
            rec["segmentation"] = [[1, 2, 3, 4]]
        if not draw(st.integers(0, 7)):  # an odd one
            odd = draw(st.sampled_from(["missing", "bbox", "huge", "not an object"]))
            if odd == "missing":
                del rec[draw(st.sampled_from(["id", "image_id", "category_id", "bbox"]))]
            elif odd == "bbox":
                rec["bbox"] = draw(st.one_of(st.lists(st.one_of(_VALUES, _NUMBERS), max_size=6), _VALUES))
            elif odd == "huge":
                rec[draw(st.sampled_from(["id", "image_id"]))] = 2**64
            else:
                rec = draw(_VALUES)
        out.append(rec)
    return out


def _read(records: list, by_chunk: bool) -> tuple[object, list]:
    """(the columns' bytes and extras, or the error's type and text), read as one chunk or box by box."""
    table = BoxTable()
    try:
        if by_chunk:
            table.extend_coco(records)
        else:
            for a in records:
                table.append(_coco_annotation(a))
    except Exception as e:  # noqa: BLE001 - the error itself is what is compared
        return (type(e), str(e)), []
    return [col.tobytes() for col in (*table.ints.values(), *table.floats.values())], table.extra


@settings(max_examples=400, deadline=None)
@given(_records())
def test_annotations_read_in_chunks_equal_box_by_box(records):
    """The column-by-column path gives the same columns, bit for bit (NaN too), or the same error, as reading
    box by box."""
    assert _read(records, by_chunk=True) == _read(records, by_chunk=False)
