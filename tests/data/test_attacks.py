"""Hostile datasets, made by the tests: names that point outside the data, symlinks out, archive bombs.
Nothing outside the data's root is ever read or stored; each attempt is a listed finding or a clear error."""

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from cvpipe.data.schema import DetectionDataset
from cvpipe.data.sources import ArchiveLimits, UnsafeArchive, extract_archive

OUTSIDE = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path("/etc/passwd")


def _stored_bytes(ctx) -> set[bytes]:
    return {p.read_bytes() for p in ctx.output("images").iterdir()}


def _findings(ctx) -> list[dict]:
    return json.loads((ctx.output("dataset") / "findings.json").read_text())


def _hostile_coco(coco_dir: Path) -> None:
    coco = json.loads((coco_dir / "annotations.json").read_text())
    for i, name in ((20, str(OUTSIDE)), (21, "../../../../etc/passwd"), (22, "images/../../outside.jpg"),
                    (23, "C:/Windows/win.ini"), (24, "..\\..\\etc\\passwd")):
        coco["images"].append({"id": i, "file_name": name, "width": 10, "height": 10})
        coco["annotations"].append({"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 2, 2],
                                    "area": 4, "iscrowd": 0})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    (coco_dir.parent / "outside.jpg").write_bytes((coco_dir / "images" / "img1.jpg").read_bytes() + b"x")


def _assert_only_inside_read(ctx, summary) -> None:
    unsafe = [f for f in _findings(ctx) if f["rule"] == "unsafe_path"]
    assert {f["image_id"] for f in unsafe} == {20, 21, 22, 23, 24}
    assert {f["ann_id"] for f in unsafe if f["ann_id"]} == {120, 121, 122, 123, 124}
    assert all(f["action"] == "dropped" for f in unsafe)
    assert summary["images"] == 6 and summary["annotations"] == 7
    ds = DetectionDataset.load(ctx.output("dataset"))
    assert set(ds.images["image_id"]) == set(range(1, 7))
    stored = _stored_bytes(ctx)
    assert OUTSIDE.read_bytes() not in stored and len(stored) == 6


@pytest.mark.parametrize("kind", ["folder", "tar.gz", "zip"])
def test_coco_file_names_outside_the_data_are_never_read(coco_dir, run_load, tmp_path, kind):
    _hostile_coco(coco_dir)
    source = coco_dir
    if kind == "tar.gz":
        source = tmp_path / "data.tar.gz"
        with tarfile.open(source, "w:gz") as tf:
            tf.add(coco_dir, arcname="coco")
    elif kind == "zip":
        source = tmp_path / "data.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for p in coco_dir.rglob("*"):
                zf.write(p, Path("coco") / p.relative_to(coco_dir))
    ctx, summary = run_load(source)
    _assert_only_inside_read(ctx, summary)


def test_voc_filename_outside_the_data_is_never_read(coco_dir, run_load, tmp_path):
    from cvpipe.data.formats import write_voc

    coco_ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(coco_ctx.output("dataset"))
    write_voc(ds, {int(r.image_id): coco_dir / "images" / r.file_name for r in ds.images.itertuples()},
              tmp_path / "voc")
    xml = tmp_path / "voc" / "Annotations" / "img1.xml"
    xml.write_text(xml.read_text().replace("<filename>img1.jpg</filename>", f"<filename>{OUTSIDE}</filename>"))
    xml2 = tmp_path / "voc" / "Annotations" / "img2.xml"
    xml2.write_text(xml2.read_text().replace("<filename>img2.jpg</filename>",
                                             "<filename>../../../../etc/passwd</filename>"))
    ctx, summary = run_load(tmp_path / "voc")
    unsafe = [f for f in _findings(ctx) if f["rule"] == "unsafe_path"]
    assert len(unsafe) == 2 and all("Annotations/img" in f["detail"] for f in unsafe)
    assert summary["images"] == 4
    assert OUTSIDE.read_bytes() not in _stored_bytes(ctx)


def test_symlinks_out_of_the_data_are_not_followed(coco_dir, run_load, tmp_path):
    from cvpipe.data.formats import write_yolo

    coco_ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(coco_ctx.output("dataset"))
    write_yolo(ds, {int(r.image_id): coco_dir / "images" / r.file_name for r in ds.images.itertuples()},
               tmp_path / "yolo")
    os.symlink(OUTSIDE, tmp_path / "yolo" / "images" / "leak.jpg")
    os.symlink("/etc", tmp_path / "yolo" / "images" / "etc")
    ctx, summary = run_load(tmp_path / "yolo")
    assert summary["images"] == 6
    assert OUTSIDE.read_bytes() not in _stored_bytes(ctx)
    listed = sorted(f["detail"].split(":")[0] for f in _findings(ctx) if f["rule"] == "unsafe_path")
    assert listed == ["images/etc", "images/leak.jpg"]  # each skipped link is listed, not quietly left out
    # the same through COCO: a file_name that is a symlink out is refused too
    os.symlink(OUTSIDE, coco_dir / "images" / "leak.jpg")
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["images"].append({"id": 30, "file_name": "leak.jpg", "width": 1, "height": 1})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    ctx, summary = run_load(coco_dir)
    assert [f["image_id"] for f in _findings(ctx) if f["rule"] == "unsafe_path"] == [30]


def _zip_bomb(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("annotations.json", '{"images": [], "annotations": [], "categories": []}')
        with zf.open("images/bomb.bin", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


def test_zip_bomb_is_refused_before_anything_is_written(run_load, tmp_path):
    bomb = _zip_bomb(tmp_path / "bomb.zip", 200 << 20)  # ~200 KB expanding to 200 MB
    assert bomb.stat().st_size < 400_000
    with pytest.raises(UnsafeArchive, match=r"zip bomb.*archive_limits.max_ratio"):
        run_load(bomb)
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_limits_are_configurable(coco_dir, run_load, tmp_path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(coco_dir, arcname="coco")
    with pytest.raises(UnsafeArchive, match="max_files"):
        run_load(archive, archive_limits={"max_files": 3})
    with pytest.raises(UnsafeArchive, match="max_bytes"):
        run_load(archive, archive_limits={"max_bytes": 10_000})
    ctx, summary = run_load(archive, archive_limits={"max_files": 100, "max_bytes": 10_000_000})
    assert summary["images"] == 6
    with pytest.raises(ValueError):
        ArchiveLimits(max_ratio=0.5)


def test_tar_with_device_or_absolute_member_is_refused(tmp_path):
    evil = tmp_path / "dev.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("coco/null")
        info.type = tarfile.CHRTYPE
        tf.addfile(info)
    with pytest.raises(UnsafeArchive, match="device"):
        extract_archive(evil, tmp_path / "out")
    abs_zip = tmp_path / "abs.zip"
    with zipfile.ZipFile(abs_zip, "w") as zf:
        zf.writestr("/tmp/owned.txt", "x")
    with pytest.raises(UnsafeArchive, match="zip slip"):
        extract_archive(abs_zip, tmp_path / "out2")
    truncated = tmp_path / "cut.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = os.urandom(50_000)
        info = tarfile.TarInfo("a.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="not a readable archive"):
        extract_archive(truncated, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_data_whose_every_image_is_unsafe_is_one_clear_error(coco_dir, run_load):
    coco = json.loads((coco_dir / "annotations.json").read_text())
    for im in coco["images"]:
        im["file_name"] = f"../../outside/{im['file_name']}"
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"no usable images .*every image \(6\) was dropped as an unsafe path"):
        run_load(coco_dir)
