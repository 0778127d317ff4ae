"""A stored data version is read part by part (DetectionData.load reads its images table, the rest when first
used), and a version patched from it copies the parts it did not change instead of encoding them again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cvpipe.data.schema import DetectionData, DetectionDataset

FILES = ("images.parquet", "annotations.parquet", "categories.parquet", "findings.json", "findings.parquet",
         "source.json")


def _data() -> DetectionData:
    images = [{"image_id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48, "digest": f"{i:064x}",
               "blob": f"{i:064x}.jpg", "source": f"images/{i}.jpg"} for i in range(1, 4)]
    anns = [{"ann_id": i, "image_id": i, "category_id": 1, "x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0, "area": 12.0}
            for i in range(1, 4)]
    ds = DetectionDataset.build(images, anns, [{"category_id": 1, "name": "cat", "label": 0}])
    findings = [{"step": "data_prep", "rule": "tiny_box", "action": "kept", "image_id": 2, "ann_id": 2,
                 "detail": "3 x 4 px"}]
    return DetectionData.of(ds, findings, {"format": "coco", "digest": "abc"})


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def test_a_loaded_version_reads_each_part_when_first_used_and_equals_the_saved_one(tmp_path, monkeypatch):
    from cvpipe.data import schema

    data = _data()
    data.save(tmp_path / "v1")
    read: list[str] = []
    for part, reader in list(schema._PART_READERS.items()):
        monkeypatch.setitem(schema._PART_READERS, part, lambda d, part=part, reader=reader: read.append(part) or
                            reader(d))
    loaded = DetectionData.load(tmp_path / "v1")
    assert read == [] and loaded.images.equals(data.images)
    assert loaded.annotations.equals(data.annotations) and read == ["annotations"]
    assert loaded.annotations is loaded.annotations and read == ["annotations"]  # read once
    assert loaded.categories.equals(data.categories)
    assert loaded.findings == data.findings and loaded.source == data.source
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        loaded.nonsense  # noqa: B018
    with pytest.raises(ValueError, match="only a version loaded"):
        data.patched(data.images)


def test_a_patched_version_copies_the_parts_it_keeps_and_saves_what_a_full_save_writes(tmp_path):
    data = _data()
    data.save(tmp_path / "v1")
    images = data.images.copy()
    images.loc[1, "digest"], images.loc[1, "blob"] = "f" * 64, "f" * 64 + ".jpg"
    patched = DetectionData.load(tmp_path / "v1").patched(images, {"format": "coco", "digest": "def"})
    patched.save(tmp_path / "patched")
    assert not {"annotations", "categories", "findings"} & set(patched.__dict__)  # never read: copied
    full = DetectionData(images, data.annotations, data.categories, data.findings, {"format": "coco", "digest": "def"})
    full.save(tmp_path / "full")
    assert _digests(tmp_path / "patched") == _digests(tmp_path / "full")
    before, after = _digests(tmp_path / "v1"), _digests(tmp_path / "patched")
    assert [n for n in FILES if before[n] != after[n]] == ["images.parquet", "source.json"]
    report = tmp_path / "report"
    patched.save_findings(report)
    assert sorted(p.name for p in report.iterdir()) == ["findings.json", "findings.parquet"]
    assert (report / "findings.json").read_bytes() == (tmp_path / "full" / "findings.json").read_bytes()
    assert (tmp_path / "patched" / "annotations.parquet").stat().st_ino != \
        (tmp_path / "v1" / "annotations.parquet").stat().st_ino  # a copy, never the stored file itself
