import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cvpipe.data.schema import SPLITS, DetectionDataset
from cvpipe.data.validate import ValidationFailed


def corrupt(coco_dir):
    """Every defect data_prep knows, once each, on the small COCO set."""
    coco = json.loads((coco_dir / "annotations.json").read_text())
    anns = coco["annotations"]
    anns[0]["bbox"] = [-5, 10, 20, 30]  # negative x -> clipped to x=0, w=15
    anns[1]["bbox"] = [60, 5, 40, 15]  # beyond the 72 px wide image -> clipped to w=12
    anns.append({"id": 50, "image_id": 3, "category_id": 1, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0})
    anns.append({"id": 51, "image_id": 3, "category_id": 99, "bbox": [5, 5, 5, 5], "area": 25, "iscrowd": 0})
    anns.append({"id": 52, "image_id": 5, "category_id": 1, "bbox": [None, 5, 5, 5], "area": 25, "iscrowd": 0})
    anns.append({"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0})
    coco["images"][3]["width"] = 500  # image 4: recorded size is wrong
    # image 7: truncated JPEG; image 8: not decodable at all; image 9: missing; image 10: duplicate of image 1
    data = (coco_dir / "images" / "img2.jpg").read_bytes()
    (coco_dir / "images" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (coco_dir / "images" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    shutil.copyfile(coco_dir / "images" / "img1.jpg", coco_dir / "images" / "copy.jpg")
    for i, name in ((7, "trunc.jpg"), (8, "garbage.jpg"), (9, "missing.jpg"), (10, "copy.jpg")):
        coco["images"].append({"id": i, "file_name": name, "width": 72, "height": 48})
        anns.append({"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100,
                     "iscrowd": 0})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))


def by_rule(findings):
    out = {}
    for f in findings:
        if f["step"] == "data_prep":
            out.setdefault((f["rule"], f["action"]), []).append(f)
    return out


def test_every_rule_fixes_or_drops_and_reports(coco_dir, run_load, run_prep):
    corrupt(coco_dir)
    load_ctx, _ = run_load(coco_dir)
    ctx, summary = run_prep(load_ctx)
    findings = json.loads((ctx.output("report") / "findings.json").read_text())
    rules = by_rule(findings)
    assert {k: len(v) for k, v in rules.items()} == {
        ("missing_image", "dropped"): 1, ("corrupt_image", "dropped"): 2, ("size_mismatch", "fixed"): 1,
        ("duplicate_image", "dropped"): 1, ("image_dropped", "dropped"): 4, ("unknown_category", "dropped"): 1,
        ("nan_box", "dropped"): 1, ("duplicate_ann_id", "fixed"): 1, ("out_of_image", "fixed"): 2,
        ("tiny_box", "dropped"): 1, ("empty_image", "kept"): 1}
    corrupt_ids = {f["image_id"] for f in rules[("corrupt_image", "dropped")]}
    assert corrupt_ids == {7, 8}
    ds = DetectionDataset.load(ctx.output("dataset"))
    assert set(ds.images["image_id"]) == {1, 2, 3, 4, 5, 6}
    a = ds.annotations.set_index("ann_id")
    assert (a.loc[1, "x"], a.loc[1, "w"]) == (0, 15)
    assert a.loc[2, "x"] + a.loc[2, "w"] == 72
    assert ds.annotations["ann_id"].is_unique
    assert int(ds.images.set_index("image_id").loc[4, "width"]) == 96
    kept = {p.name for p in ctx.output("images").iterdir()}
    assert kept == set(ds.images["blob"])
    # nothing silently lost: every input annotation is either kept or named by a finding
    loaded = DetectionDataset.load(load_ctx.output("dataset"))
    named = {f["ann_id"] for f in findings if f["action"] == "dropped" and f["ann_id"] is not None}
    assert len(loaded.annotations) == len(ds.annotations) + len(named)
    assert summary["findings"]["tiny_box:dropped"] == 1


@pytest.mark.parametrize("rule", ["missing_image", "corrupt_image", "unknown_category", "out_of_image", "tiny_box"])
def test_fail_policy_stops_with_the_rule_named(coco_dir, run_load, run_prep, rule):
    corrupt(coco_dir)
    load_ctx, _ = run_load(coco_dir)
    with pytest.raises(ValidationFailed, match=rule):
        run_prep(load_ctx, validation={rule: "fail"})


def test_drop_empty_images_and_policies(coco_dir, run_load, run_prep):
    load_ctx, _ = run_load(coco_dir)
    ctx, summary = run_prep(load_ctx, validation={"empty_image": "drop"})
    assert summary["images"] == 5 and summary["findings"] == {"empty_image:dropped": 1}


def test_class_conversion_keeps_original_ids(coco_dir, run_load, run_prep):
    load_ctx, _ = run_load(coco_dir)
    ctx, _ = run_prep(load_ctx, classes={"rename": {"car": "vehicle"}, "merge": {"pet": ["cat", "dog"]}})
    ds = DetectionDataset.load(ctx.output("dataset"))
    cats = ds.categories.set_index("name")
    assert list(ds.categories.sort_values("label")["name"]) == ["pet", "vehicle"]
    assert int(cats.loc["pet", "category_id"]) == 1 and int(cats.loc["vehicle", "category_id"]) == 7
    assert ds.label_to_category_id() == {0: 1, 1: 7}
    assert sorted(ds.annotations["category_id"].value_counts().items()) == [(1, 5), (7, 2)]
    ctx, summary = run_prep(load_ctx, classes={"keep_only": ["dog"]})
    ds = DetectionDataset.load(ctx.output("dataset"))
    assert list(ds.categories["name"]) == ["dog"] and len(ds.annotations) == 2
    assert summary["findings"]["drop_class:dropped"] == 5
    with pytest.raises(ValueError, match="does not have"):
        run_prep(load_ctx, classes={"drop": ["unicorn"]})


def test_split_is_deterministic_stratified_and_reported(tmp_path, run_load, run_prep, image_maker):

    root = tmp_path / "many"
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 6)]
    for i in range(1, 81):
        image_maker(root / "images" / f"{i}.jpg", 32, 32, seed=1000 + i)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 32})
        # class 5 is rare: 6 images; the rest are common
        classes = [5] if i <= 6 else [1 + i % 4]
        for c in classes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [2, 2, 10, 10], "area": 100,
                         "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    load_ctx, _ = run_load(root)
    a, sa = run_prep(load_ctx, seed=3)
    b, sb = run_prep(load_ctx, seed=3)
    c, _ = run_prep(load_ctx, seed=4)
    split = lambda ctx: dict(zip(*DetectionDataset.load(ctx.output("dataset")).images[["image_id", "split"]].T.values))  # noqa: E731
    assert split(a) == split(b) and split(a) != split(c)
    # the split depends on the content, not on the order rows come in
    coco = json.loads((root / "annotations.json").read_text())
    coco["images"].reverse()
    coco["annotations"].reverse()
    (root / "annotations.json").write_text(json.dumps(coco))
    reordered, _ = run_prep(run_load(root)[0], seed=3)
    assert split(reordered) == split(a)
    ideal = {"train": 56, "val": 12, "test": 12}
    assert sum(sa["splits"].values()) == 80
    assert all(abs(sa["splits"][s] - n) <= 2 for s, n in ideal.items()), sa["splits"]
    ds = DetectionDataset.load(a.output("dataset"))
    for s in SPLITS:
        assert 5 in set(ds.split(s).annotations["category_id"]), f"rare class missing from {s}"
    html = (a.output("report") / "report.html").read_text()
    for name in ds.categories["name"]:
        assert f"<td>{name}</td>" in html
    for png in ("class_histogram.png", "box_statistics.png", "images_per_split.png", "samples.png"):
        assert (a.output("report") / png).stat().st_size > 1000
    for s in SPLITS:
        coco = json.loads(ds.write_coco(tmp_path / f"coco_{s}.json", s).read_text())
        assert len(coco["images"]) == sa["splits"][s]


def test_duplicate_images_kept_by_policy_share_one_file(coco_dir, run_load, run_prep):
    shutil.copyfile(coco_dir / "images" / "img1.jpg", coco_dir / "images" / "copy.jpg")
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["images"].append({"id": 9, "file_name": "copy.jpg", "width": 72, "height": 48})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    load_ctx, _ = run_load(coco_dir)
    ctx, summary = run_prep(load_ctx, validation={"duplicate_image": "keep"})
    ds = DetectionDataset.load(ctx.output("dataset"))
    assert summary["images"] == 7 and summary["findings"]["duplicate_image:kept"] == 1
    assert sorted(p.name for p in ctx.output("images").iterdir()) == sorted(set(ds.images["blob"]))


def test_split_from_source_folders(tmp_path, run_load, run_prep, image_maker):
    root = tmp_path / "foldered"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").mkdir()
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    for i in range(12):
        part = "val" if i % 4 == 0 else "train"
        image_maker(root / "images" / part / f"{i}.jpg", 40, 30, seed=i)
        (root / "labels" / part / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.2 0.2\n")
    load_ctx, _ = run_load(root)
    ctx, summary = run_prep(load_ctx, split_from_source=True)
    assert summary["splits"] == {"train": 9, "val": 3, "test": 0}
    ds = DetectionDataset.load(ctx.output("dataset"))
    assert all(r.split in r.source.split("/") for r in ds.images.itertuples())


def _voc_box_xml(filename: str, boxes: list[tuple[str, int, int, int, int]], w: int = 72, h: int = 48) -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in boxes)
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def test_inverted_boxes_are_their_own_rule(coco_dir, run_load, run_prep, tmp_path, image_maker):
    # VOC gives corners: swapped corners are swapped back to exactly the box meant
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    image_maker(voc / "JPEGImages" / "a.jpg", 72, 48, seed=1)
    (voc / "Annotations" / "a.xml").write_text(
        _voc_box_xml("a.jpg", [("cat", 50, 10, 20, 30), ("cat", 11, 11, 30, 40)]))
    ctx, summary = run_prep(run_load(voc)[0])
    assert summary["findings"] == {"inverted_box:fixed": 1}
    boxes = sorted(DetectionDataset.load(ctx.output("dataset")).annotations[["x", "y", "w", "h"]]
                   .itertuples(index=False, name=None))
    assert boxes == [(10.0, 10.0, 20.0, 30.0), (19.0, 9.0, 31.0, 21.0)]  # [20..50] x [10..30], 1-based inclusive
    # COCO's xywh with a negative width means nothing: dropped, under its own rule, not out_of_image
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = [30, 10, -20, 30]
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    ctx, summary = run_prep(run_load(coco_dir)[0])
    assert summary["findings"].get("inverted_box:dropped") == 1 and "out_of_image:fixed" not in summary["findings"]
    with pytest.raises(ValidationFailed, match="inverted_box"):
        run_prep(run_load(coco_dir)[0], validation={"inverted_box": "fail"})


def test_voc_imagesets_and_stable_class_ids(tmp_path, run_load, run_prep, image_maker):
    voc = tmp_path / "VOC2012"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    sets = {"train": [], "val": [], "test": []}
    for i in range(9):
        stem = f"2008_{i:06d}"
        image_maker(voc / "JPEGImages" / f"{stem}.jpg", 40, 30, seed=i)
        name = ["dog", "person", "bird"][i % 3] if i < 6 else "person"
        (voc / "Annotations" / f"{stem}.xml").write_text(_voc_box_xml(f"{stem}.jpg", [(name, 2, 2, 20, 20)], 40, 30))
        sets[("train", "val", "test")[i % 3]].append(stem)
    for split, stems in sets.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    (voc / "classes.txt").write_text("person\nbird\ndog\ncat\n")
    load_ctx, _ = run_load(voc)
    ds = DetectionDataset.load(load_ctx.output("dataset"))
    assert dict(zip(ds.categories["name"], ds.categories["category_id"])) == {"person": 1, "bird": 2, "dog": 3,
                                                                               "cat": 4}
    ctx, summary = run_prep(load_ctx, split_from_source=True)
    assert summary["splits"] == {"train": 3, "val": 3, "test": 3}
    got = DetectionDataset.load(ctx.output("dataset")).images
    want = {stem: split for split, stems in sets.items() for stem in stems}
    assert all(want[Path(r.file_name).stem] == r.split for r in got.itertuples())
    # a second load of only part of the project keeps the same ids
    for xml in sorted((voc / "Annotations").glob("*.xml"))[6:]:
        xml.unlink()
    again = DetectionDataset.load(run_load(voc)[0].output("dataset"))
    assert dict(zip(again.categories["name"], again.categories["category_id"]))["dog"] == 3


def test_validation_and_conversion_leave_their_input_tables_as_they_were(coco_dir, run_load, own_cache):
    """Validation and class conversion no longer copy the boxes up front (44 MB a copy at 10^5 images): every
    rule that changes boxes (clip, new ids for duplicates, a merge) must change a new frame, never the input."""
    from cvpipe.data.convert import ClassMapping, convert_classes
    from cvpipe.data.policy import ValidationPolicy
    from cvpipe.data.validate import validate

    corrupt(coco_dir)
    load_ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(load_ctx.output("dataset"))
    before = ds.annotations.copy(), ds.images.copy()
    result = validate(ds, lambda blob: load_ctx.output("images") / blob, ValidationPolicy(), executor="serial")
    assert len(result.findings) > 10  # the rules did change things
    names = ds.categories.set_index("category_id")["name"]
    result_before = result.dataset.annotations.copy()
    converted, _ = convert_classes(result.dataset, ClassMapping(merge={str(names[1]): [str(names[3])]}))
    assert (converted.annotations["category_id"] != 3).all() and (result_before["category_id"] == 3).any()
    pd.testing.assert_frame_equal(ds.annotations, before[0])
    pd.testing.assert_frame_equal(ds.images, before[1])
    pd.testing.assert_frame_equal(result.dataset.annotations, result_before)


def test_decode_verdicts_are_recorded_as_they_come_and_reused(coco_dir, run_load, monkeypatch, own_cache):
    """Verdicts go into columns and into the cache a batch at a time (no dict per image held to the end); the
    next pass decodes nothing with a file and gives the same verdicts, errors included."""
    from cvpipe.data import validate as v

    corrupt(coco_dir)
    load_ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(load_ctx.output("dataset"))

    def path(blob):
        return load_ctx.output("images") / blob

    monkeypatch.setattr(v, "FACTS_BATCH", 2)
    first = v.decode_checks(ds.images, path, frozenset(), "serial")
    assert {e.split(":")[0] for e in first.error} >= {"", "missing", "ImageDecodeError"}
    decoded = []

    def not_again(job):
        if job[0] is None:  # no file: checked every time (not a verdict on content)
            return v.ImageCheck(error="missing")
        decoded.append(job)
        return v.ImageCheck(error="decoded again")

    monkeypatch.setattr(v, "check_image", not_again)
    again = v.decode_checks(ds.images, path, frozenset(), "serial")
    assert decoded == []
    assert [again.verdict(k) for k in range(len(ds.images))] == [first.verdict(k) for k in range(len(ds.images))]
