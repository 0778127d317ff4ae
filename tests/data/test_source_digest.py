"""data_load's cache keys on the content of its source: one changed byte (in a folder, an archive, behind a
URL) is a new run; unchanged data is reused. The digest is in the manifest."""

import json
import os
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cvpipe.config import build_config
from cvpipe.data.schema import DetectionDataset
from cvpipe.data.sources import digest_source
from cvpipe.pipeline.runner import Runner, SourceError, StepFailed
from cvpipe.store import ArtifactStore


@pytest.fixture
def load_step(tmp_path):
    def run(source: str, force: bool = False):
        cfg = build_config({"store": str(tmp_path / "store"), "env": "test", "pipeline": "data",
                            "data_load": {"source": str(source), "executor": "serial"}})
        return Runner(cfg, force=force).run_step("data_load")

    return run


def _zip(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src))
    return dest


def _same_size_edit(path: Path, offset: int) -> None:
    """Change the byte at `offset` (negative: from the end), keeping the size and the modification time, so
    only a digest of the content can see it."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 1  # a digit stays a digit (0x30-0x39 pair up)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def _annotation_digit(path: Path) -> int:
    """Offset of a box height digit in annotations.json (an edit there changes one box, not the JSON's validity)."""
    return path.read_bytes().index(b'"bbox": [10, 10, 20, 30]') + len(b'"bbox": [10, 10, 20, ')


def _touch(path: Path) -> None:
    """A new modification time, the same bytes."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_folder_source_one_byte_invalidates_the_cache(coco_dir, load_step, monkeypatch):
    """A changed file is a new run. An edit that keeps both size and mtime is seen only with --rehash
    (CVPIPE_REHASH=1): unchanged files are not read again (cvpipe.store.digests, docs/data.md)."""
    monkeypatch.setenv("CVPIPE_REHASH", "0")
    for p in coco_dir.rglob("*"):  # data written well before this run (a file written this second is re-read)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns - 100_000_000_000))
    first = load_step(coco_dir)
    assert load_step(coco_dir).run_id == first.run_id  # unchanged: reused
    src = first.manifest["source"]
    assert set(src) == {"uri", "digest", "files"} and src["files"] == 7 and len(src["digest"]) == 64
    assert src["digest"] == digest_source(str(coco_dir)).digest
    annotations = coco_dir / "annotations.json"
    _same_size_edit(annotations, _annotation_digit(annotations))  # same size, same mtime: only content differs
    assert load_step(coco_dir).run_id == first.run_id  # not seen without --rehash (the documented limit)
    monkeypatch.setenv("CVPIPE_REHASH", "1")
    second = load_step(coco_dir)
    assert second.run_id != first.run_id and second.manifest["source"]["digest"] != src["digest"]
    # an image's bytes count too, not just its size and time
    _same_size_edit(coco_dir / "images" / "img3.jpg", -3)
    third = load_step(coco_dir)
    assert third.run_id != second.run_id
    monkeypatch.setenv("CVPIPE_REHASH", "0")
    (coco_dir / "images" / "img3.jpg").write_bytes(b"other bytes, other size")  # an ordinary edit: seen
    assert load_step(coco_dir).run_id != third.run_id


def test_folder_source_touched_without_a_change_is_reused(coco_dir, load_step):
    first = load_step(coco_dir)
    _touch(coco_dir / "annotations.json")
    _touch(coco_dir / "images" / "img2.jpg")
    assert load_step(coco_dir).run_id == first.run_id


def test_archive_source_same_size_change_is_a_new_run(coco_dir, load_step, tmp_path):
    archive = _zip(coco_dir, tmp_path / "data.zip")
    first = load_step(archive)
    _touch(archive)
    assert load_step(archive).run_id == first.run_id
    annotations = coco_dir / "annotations.json"
    _same_size_edit(annotations, _annotation_digit(annotations))
    stat = archive.stat()
    _zip(coco_dir, archive)  # the same members, sizes and times: one digit differs inside
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert archive.stat().st_size == stat.st_size
    assert load_step(archive).run_id != first.run_id


def test_archive_source_truncated_is_not_reused(coco_dir, load_step, tmp_path):
    archive = _zip(coco_dir, tmp_path / "data.zip")
    first = load_step(archive)
    assert first.manifest["source"]["files"] == 1
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(StepFailed, match="not a readable archive"):
        load_step(archive)
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data")
    assert store.latest_run("data_load").run_id == first.run_id


def test_url_source_changed_behind_the_server(coco_dir, load_step, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.zip"
        _zip(coco_dir, www / "data.zip")
        first = load_step(url)
        assert load_step(url).run_id == first.run_id
        size = (www / "data.zip").stat().st_size
        annotations = coco_dir / "annotations.json"
        _same_size_edit(annotations, _annotation_digit(annotations))
        _zip(coco_dir, www / "data.zip")
        assert (www / "data.zip").stat().st_size == size  # the same size behind the same URL
        second = load_step(url)
        assert second.run_id != first.run_id
        assert second.manifest["source"]["digest"] != first.manifest["source"]["digest"]
        with pytest.raises(SourceError, match="cannot download"):
            load_step(url.replace("data.zip", "missing.zip"))
    finally:
        server.shutdown()


def test_memory_store_source_digest_follows_content(coco_dir, load_step, copy_to_memory):
    import fsspec

    fs = fsspec.filesystem("memory")
    copy_to_memory(coco_dir, "digest-bucket/coco")
    first = digest_source("memory://digest-bucket/coco")
    assert first.files == 7
    fs.pipe("/digest-bucket/coco/annotations.json", (coco_dir / "annotations.json").read_bytes() + b" ")
    assert digest_source("memory://digest-bucket/coco").digest != first.digest


def test_missing_source_is_one_clear_error_before_any_run(load_step, tmp_path):
    with pytest.raises(SourceError, match="data source not found"):
        load_step(tmp_path / "nope")
    assert ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data").list_runs() == []


def test_dataset_records_the_source_digest(coco_dir, load_step, tmp_path):
    rec = load_step(coco_dir)
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data")
    info = json.loads((store.materialize(rec, "dataset") / "source.json").read_text())
    assert info["digest"] == rec.manifest["source"]["digest"] and info["format"] == "coco"
    assert len(DetectionDataset.load(store.materialize(rec, "dataset")).images) == 6
