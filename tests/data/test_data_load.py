import io
import json
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cvpipe.data.formats import write_voc, write_yolo
from cvpipe.data.schema import DetectionDataset
from cvpipe.data.sources import UnsafeArchive, extract_archive


def canonical(ctx):
    ds = DetectionDataset.load(ctx.output("dataset"))
    names = dict(zip(ds.categories["category_id"], ds.categories["name"]))
    files = dict(zip(ds.images["image_id"], ds.images["file_name"].map(lambda f: Path(f).name)))
    digests = dict(zip(ds.images["image_id"], ds.images["digest"]))
    return sorted((files[a.image_id], digests[a.image_id], names[a.category_id],
                   round(a.x, 3), round(a.y, 3), round(a.w, 3), round(a.h, 3)) for a in ds.annotations.itertuples())


def test_coco_load_normalises_and_stores_by_digest(coco_dir, run_load, tmp_path):
    ctx, summary = run_load(coco_dir)
    assert summary == {"format": "coco", "images": 6, "annotations": 7, "categories": 3, "distinct_files": 6,
                       "findings": 0}
    ds = DetectionDataset.load(ctx.output("dataset"))
    for r in ds.images.itertuples():
        stored = ctx.output("images") / r.blob
        assert stored.read_bytes() == (coco_dir / "images" / r.file_name).read_bytes()
        assert r.blob == f"{r.digest}.jpg"
    assert not (ctx.output("dataset") / "coco.json").exists()  # written on demand (cvpipe coco), not per version
    coco = json.loads(ds.write_coco(tmp_path / "coco.json").read_text())
    assert {c["id"] for c in coco["categories"]} == {1, 3, 7}
    assert len(coco["annotations"]) == 7


def test_same_raw_data_gives_same_digests(coco_dir, run_load):
    a, _ = run_load(coco_dir)
    b, _ = run_load(coco_dir)
    assert canonical(a) == canonical(b)


def test_every_format_round_trips_to_the_same_dataset(coco_dir, run_load, tmp_path):
    coco_ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(coco_ctx.output("dataset"))
    paths = {int(r.image_id): coco_dir / "images" / r.file_name for r in ds.images.itertuples()}
    write_yolo(ds, paths, tmp_path / "yolo")
    write_voc(ds, paths, tmp_path / "voc")
    yolo_ctx, ys = run_load(tmp_path / "yolo")
    voc_ctx, vs = run_load(tmp_path / "voc")
    assert ys["format"] == "yolo" and vs["format"] == "voc"
    assert canonical(yolo_ctx) == canonical(coco_ctx) == canonical(voc_ctx)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives(coco_dir, run_load, tmp_path, kind):
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in coco_dir.rglob("*"):
                zf.write(p, Path("coco") / p.relative_to(coco_dir))
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(coco_dir, arcname="coco")
    ctx, summary = run_load(archive)
    assert summary["images"] == 6 and summary["annotations"] == 7
    assert canonical(ctx) == canonical(run_load(coco_dir)[0])
    # a second load (another scratch dir) writes the same dataset files
    again, _ = run_load(archive)
    for name in ("images.parquet", "annotations.parquet", "source.json"):
        assert (again.output("dataset") / name).read_bytes() == (ctx.output("dataset") / name).read_bytes(), name


def test_zip_slip_is_refused(tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(UnsafeArchive, match="zip slip"):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as tf:
        info = tarfile.TarInfo("/etc/owned")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeArchive):
        extract_archive(evil_tar, tmp_path / "out2")
    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as tf:
        info = tarfile.TarInfo("a/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchive):
        extract_archive(link_tar, tmp_path / "out3")


def test_http_url_source(coco_dir, run_load, tmp_path):
    serve_dir = tmp_path / "www"
    serve_dir.mkdir()
    with zipfile.ZipFile(serve_dir / "data.zip", "w") as zf:
        for p in coco_dir.rglob("*"):
            zf.write(p, p.relative_to(coco_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(serve_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ctx, summary = run_load(f"{url}/data.zip")
        assert summary["images"] == 6
        with pytest.raises(ConnectionError, match="Download it by hand"):
            run_load(f"{url}/missing.zip")
    finally:
        server.shutdown()


def test_fsspec_url_source(coco_dir, run_load, copy_to_memory):
    ctx, summary = run_load(copy_to_memory(coco_dir, "bucket/coco"))
    assert summary["images"] == 6 and canonical(ctx) == canonical(run_load(coco_dir)[0])


def test_problems_are_recorded_not_fatal(coco_dir, run_load):
    (coco_dir / "images" / "img2.jpg").unlink()
    (coco_dir / "images" / "img3.jpg").write_bytes(b"not an image at all")
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["annotations"].append({"id": 99, "image_id": 42, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4,
                                "iscrowd": 0})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    ctx, summary = run_load(coco_dir)
    findings = json.loads((ctx.output("dataset") / "findings.json").read_text())
    rules = sorted(f["rule"] for f in findings)
    assert rules == ["annotation_without_image", "corrupt_image", "missing_image"]
    assert summary["images"] == 6  # kept for data_prep to decide


def test_missing_source_and_unknown_format(run_load, tmp_path):
    with pytest.raises(FileNotFoundError):
        run_load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the annotation format"):
        run_load(tmp_path / "empty")


def test_source_column_is_the_path_inside_the_raw_data_and_extras_survive(coco_dir, run_load, tmp_path):
    ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(ctx.output("dataset"))
    assert set(ds.images["source"]) == {f"images/img{i}.jpg" for i in range(1, 7)}
    assert all(json.loads(e) == {"license": 4} for e in ds.images["extra"])
    coco = json.loads(ds.write_coco(tmp_path / "coco.json").read_text())
    assert {im["license"] for im in coco["images"]} == {4}


def test_yolo_corrupt_image_is_recorded_once_and_boxes_are_pixels(coco_dir, run_load, tmp_path):
    coco_ctx, _ = run_load(coco_dir)
    ds = DetectionDataset.load(coco_ctx.output("dataset"))
    paths = {int(r.image_id): coco_dir / "images" / r.file_name for r in ds.images.itertuples()}
    write_yolo(ds, paths, tmp_path / "yolo")
    (tmp_path / "yolo" / "images" / "img2.jpg").write_bytes(b"broken")
    (tmp_path / "yolo" / "labels" / "img5.txt").write_text("0 0.5 0.5 0.25\n")  # 4 values: a bad line
    ctx, summary = run_load(tmp_path / "yolo")
    findings = json.loads((ctx.output("dataset") / "findings.json").read_text())
    assert sorted(f["rule"] for f in findings) == ["bad_label_line", "corrupt_image"]
    loaded = DetectionDataset.load(ctx.output("dataset"))
    img1 = loaded.images[loaded.images["file_name"] == "images/img1.jpg"].iloc[0]
    assert (img1.width, img1.height) == (72, 48)  # read from the header
    boxes = sorted(loaded.annotations[loaded.annotations["image_id"] == img1.image_id][["x", "y", "w", "h"]]
                   .round(3).itertuples(index=False, name=None))
    assert boxes == [(10, 10, 20, 30), (40, 5, 15, 15)]  # the conftest's boxes of img1, in pixels
    renamed, _ = run_load(tmp_path / "yolo", classes=["kitten", "puppy", "auto"])
    assert list(DetectionDataset.load(renamed.output("dataset")).categories["name"]) == ["kitten", "puppy", "auto"]


def test_findings_table_matches_the_json(coco_dir, run_load):
    (coco_dir / "images" / "img3.jpg").write_bytes(b"not an image")
    ctx, _ = run_load(coco_dir)
    import pandas as pd

    table = pd.read_parquet(ctx.output("dataset") / "findings.parquet")
    listed = json.loads((ctx.output("dataset") / "findings.json").read_text())
    assert len(table) == len(listed) == 1
    row = table.iloc[0]
    assert (row["step"], row["rule"], row["action"], int(row["image_id"])) == ("data_load", "corrupt_image",
                                                                               "recorded", 3)


def test_to_coco_keeps_ids_extras_and_segmentations():
    """The COCO JSON written from the tables (column by column, not row objects) keeps every image field the
    source had, segmentations where they exist, and plain JSON numbers."""
    import json as json_module

    from cvpipe.data.schema import DetectionDataset

    polygon = [[1.0, 2.0, 11.0, 2.0, 11.0, 12.0]]
    ds = DetectionDataset.build(
        [{"image_id": 7, "file_name": "a/x.jpg", "width": 20, "height": 10, "digest": "d" * 64,
          "blob": "d" * 64 + ".jpg", "extra": json_module.dumps({"license": 4, "coco_url": "http://x"})},
         {"image_id": 8, "file_name": "y.jpg", "width": 30, "height": 15}],
        [{"ann_id": 3, "image_id": 7, "category_id": 1, "x": 1.0, "y": 2.0, "w": 10.0, "h": 10.0, "area": 50.0,
          "extra": json_module.dumps({"segmentation": polygon})},
         {"ann_id": 4, "image_id": 8, "category_id": 2, "x": 0.5, "y": 0.0, "w": 3.0, "h": 4.0, "area": 12.0,
          "extra": json_module.dumps({"note": "segmentation is not a key here"})}],
        [{"category_id": 1, "name": "cat"}, {"category_id": 2, "name": "dog"}])
    coco = ds.to_coco()
    assert coco["images"] == [
        {"license": 4, "coco_url": "http://x", "id": 7, "file_name": "d" * 64 + ".jpg", "width": 20, "height": 10,
         "original_file_name": "a/x.jpg"},
        {"id": 8, "file_name": "y.jpg", "width": 30, "height": 15, "original_file_name": "y.jpg"}]
    assert coco["annotations"] == [
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 10.0], "area": 50.0, "iscrowd": 0,
         "segmentation": polygon},
        {"id": 4, "image_id": 8, "category_id": 2, "bbox": [0.5, 0.0, 3.0, 4.0], "area": 12.0, "iscrowd": 0}]
    assert all(type(a["id"]) is int and type(a["bbox"][0]) is float for a in coco["annotations"])
    json_module.dumps(coco)


def test_paused_gc_restores_the_collector_as_it_was():
    import gc

    from cvpipe.data.load import paused_gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError("a failing step")
    assert gc.isenabled()  # back on after an error
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # left off where the caller had turned it off
    finally:
        gc.enable()
