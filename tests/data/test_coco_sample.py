"""The bundled example (the main job's default input) through data_load and data_prep."""

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cvpipe.data.schema import DetectionDataset

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "coco_sample"


@pytest.fixture(scope="module")
def raw():
    return json.loads((SAMPLE / "annotations.json").read_text())


def test_sample_is_redistributable_and_attributed(raw):
    assert {im["license"] for im in raw["images"]} <= {4, 5, 7}
    assert len(raw["categories"]) == 80
    files = {p.name for p in (SAMPLE / "images").iterdir()}
    assert files == {im["file_name"] for im in raw["images"]}
    assert sum((SAMPLE / "images" / f).stat().st_size for f in files) < 20e6
    attribution = (SAMPLE / "ATTRIBUTION.md").read_text()
    assert all(im["file_name"] in attribution and im["flickr_url"] in attribution for im in raw["images"])
    assert "CC BY 4.0" in attribution and "Lin et al" in attribution


def test_sample_through_load_and_prep(raw, run_load, run_prep):
    load_ctx, load = run_load(SAMPLE)
    assert load == {"format": "coco", "images": len(raw["images"]), "annotations": len(raw["annotations"]),
                    "categories": 80, "distinct_files": len(raw["images"]), "findings": 0}
    loaded = DetectionDataset.load(load_ctx.output("dataset"))
    for r in loaded.images.itertuples():
        data = (SAMPLE / r.source).read_bytes()
        assert r.digest == hashlib.sha256(data).hexdigest()
        assert (load_ctx.output("images") / r.blob).read_bytes() == data
    ctx, prep = run_prep(load_ctx)
    ds = DetectionDataset.load(ctx.output("dataset"))
    # the pretrained nano head's class i is the i-th COCO category in id order
    assert ds.label_to_category_id() == {i: c["id"] for i, c in enumerate(sorted(raw["categories"],
                                                                                 key=lambda c: c["id"]))}
    # crowd regions stay, flagged
    crowd = {a["id"] for a in raw["annotations"] if a["iscrowd"]}
    assert crowd and set(ds.annotations[ds.annotations["iscrowd"] == 1]["ann_id"]) == crowd
    # images without objects stay as negatives, and are listed
    annotated = {a["image_id"] for a in raw["annotations"]}
    negatives = {im["id"] for im in raw["images"]} - annotated
    assert negatives and negatives <= set(ds.images["image_id"])
    findings = json.loads((ctx.output("report") / "findings.json").read_text())
    assert {f["image_id"] for f in findings if f["rule"] == "empty_image"} == negatives
    # the grayscale JPEG decodes and is kept
    gray = [im["id"] for im in raw["images"] if Image.open(SAMPLE / "images" / im["file_name"]).mode == "L"]
    assert gray and set(gray) <= set(ds.images["image_id"])
    assert prep["images"] == len(raw["images"]) and sum(prep["splits"].values()) == prep["images"]
    # stratified: every class expected in at least one image of each split (images * 0.15 >= 1) is in each
    per_class = {}
    for a in raw["annotations"]:
        per_class.setdefault(a["category_id"], set()).add(a["image_id"])
    split_of = dict(zip(ds.images["image_id"], ds.images["split"]))
    enough = {c: ids for c, ids in per_class.items() if len(ids) * 0.15 >= 1}
    assert len(enough) > 10
    for c, ids in enough.items():
        assert {split_of[i] for i in ids} == {"train", "val", "test"}, c
    # keep the source's own split on request: COCO's coco_url says train2017 or val2017
    ctx2, prep2 = run_prep(load_ctx, split_from_source=True)
    want = {im["id"]: "val" if "/val2017/" in im["coco_url"] else "train" for im in raw["images"]}
    got = DetectionDataset.load(ctx2.output("dataset")).images
    assert dict(zip(got["image_id"], got["split"])) == want


def test_missing_test_data_fails_on_every_machine(monkeypatch, tmp_path):
    """Without the bundled model or sample the data tests fail, with or without a CI variable: never a skip."""
    import coco_data

    monkeypatch.delenv("CI", raising=False)
    coco_data.need_data()  # the clone has both
    monkeypatch.setattr(coco_data, "NANO_ONNX", tmp_path / "missing.onnx")
    try:
        coco_data.need_data()
    except pytest.skip.Exception:  # a skip would pass CI with the data gone
        pytest.fail("need_data() skipped instead of failing")
    except pytest.fail.Exception as e:
        assert "missing.onnx" in str(e)
    else:
        pytest.fail("need_data() let missing data pass")


def test_tests_read_the_bundled_sample_unless_told_otherwise():
    import coco_data

    if not os.environ.get("CVPIPE_TEST_COCO"):
        assert coco_data.COCO_DEV == SAMPLE
