"""Faults while a data version is made: an image that changes while it is read, a file deleted between listing
and reading, a full disk part-way through storing the images. Each is a clear error (or, for a vanished image,
a listed finding), never a version marked complete with wrong content, and the previous version stays intact."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from cvpipe.config import build_config
from cvpipe.data import load as load_module
from cvpipe.data import sources as sources_module
from cvpipe.pipeline.runner import Runner, SourceError, StepFailed
from cvpipe.store import ArtifactStore
from cvpipe.store import store as store_module
from cvpipe.store.digests import ChangedWhileReading


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CVPIPE_REHASH", raising=False)


@pytest.fixture
def data(tmp_path, coco_dir):
    """(run data_load, the store): a first version already made."""
    t = time.time_ns() - 100_000_000_000
    for p in coco_dir.rglob("*"):
        os.utime(p, ns=(t, t))
    cfg = build_config({"store": str(tmp_path / "store"), "env": "test", "pipeline": "data",
                        "data_load": {"source": str(coco_dir), "executor": "serial"}})
    store = ArtifactStore.from_config(cfg)
    first = Runner(cfg).run_step("data_load")
    return (lambda: Runner(cfg).run_step("data_load")), store, first


def _edit_source(coco_dir: Path) -> None:
    """A new annotation file, so the next data_load is a new version."""
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = [12, 10, 20, 30]
    (coco_dir / "annotations.json").write_text(json.dumps(coco))


def _previous_intact(store: ArtifactStore, first) -> None:
    assert store.latest_run("data_load").run_id == first.run_id
    assert store.verify_run(first) == []
    assert not list(Path(store.root).rglob(".tmp-*"))


def test_image_changed_while_being_stored_fails_the_run(data, coco_dir, monkeypatch, image_maker):
    run, store, first = data
    _edit_source(coco_dir)
    image_maker(coco_dir / "images" / "img2.jpg", 80, 48, seed=42)  # new content: the store must copy it
    real = load_module.store_images

    def writer_strikes(*args):  # another program rewrites an image after it was digested
        with open(coco_dir / "images" / "img2.jpg", "r+b") as f:
            f.seek(-20, 2)
            f.write(b"\x00" * 20)
        return real(*args)

    monkeypatch.setattr(load_module, "store_images", writer_strikes)
    with pytest.raises(StepFailed, match="img2.jpg|content it was named by") as info:
        run()
    assert "changed while" in str(info.value) or "named by" in str(info.value)
    [failed] = [r for r in store.list_runs("data_load") if r.run_id != first.run_id]
    assert failed.status == "failed"
    _previous_intact(store, first)


def test_a_stored_content_rewritten_after_its_digest_is_versioned_as_read(data, coco_dir, monkeypatch):
    """An image whose content the store holds already is not copied again: the version names the object of
    the content digested, which is what the source held when it was read (the next run sees the rewrite)."""
    run, store, first = data
    _edit_source(coco_dir)
    real = load_module.store_images

    def writer_strikes(*args):
        (coco_dir / "images" / "img2.jpg").write_bytes(b"rewritten")
        return real(*args)

    monkeypatch.setattr(load_module, "store_images", writer_strikes)
    second = run()
    assert store.verify_run(second) == []
    assert store.entity_files(second, "images") == store.entity_files(first, "images")


def test_image_changed_between_digest_and_header_read_is_an_error(coco_dir, monkeypatch):
    path = coco_dir / "images" / "img1.jpg"
    stale = hashlib.sha256(b"what it held when digested").hexdigest()
    info = load_module.read_header_fact((path, stale))
    assert info.error.startswith("changed while being read") and info.digest == ""
    raw = load_module.read_raw(coco_dir)
    real = load_module.read_header_fact

    def img1_changed(job):  # as if img1 were rewritten between its digest and its header read
        return real((job[0], stale) if job[0].name == "img1.jpg" else job)

    monkeypatch.setattr(load_module, "read_header_fact", img1_changed)
    (coco_dir / "out").mkdir()
    with pytest.raises(ChangedWhileReading, match="img1.jpg: changed while being read"):
        load_module.normalise(raw, coco_dir / "out", "serial")


def test_a_file_whose_mtime_moves_during_hashing_is_refused(coco_dir, monkeypatch):
    from cvpipe.store import hashing
    from cvpipe.store.digests import DigestCache

    path = coco_dir / "images" / "img4.jpg"
    real = hashing.file_digest

    def rewritten_meanwhile(p):
        digest = real(p)
        os.utime(path, ns=(time.time_ns(), time.time_ns()))
        return digest

    monkeypatch.setattr(hashing, "file_digest", rewritten_meanwhile)
    with pytest.raises(ChangedWhileReading, match="img4.jpg changed while it was being read"):
        DigestCache().digest(path)


def test_file_deleted_between_listing_and_reading_the_source(data, coco_dir, monkeypatch):
    run, store, first = data
    _edit_source(coco_dir)
    real = sources_module.folder_files
    monkeypatch.setattr(sources_module, "folder_files", lambda root: [*real(root), "images/vanished.jpg"])
    with pytest.raises(SourceError, match="vanished.jpg was removed while the data source was being read"):
        run()
    assert len(store.list_runs("data_load")) == 1  # said before any run was created
    _previous_intact(store, first)


def test_image_deleted_after_the_annotations_were_read_is_a_finding(data, coco_dir, monkeypatch):
    run, store, first = data
    _edit_source(coco_dir)
    real = load_module.inspect_images

    def delete_first(paths, *args):
        (coco_dir / "images" / "img5.jpg").unlink()
        return real(paths, *args)

    monkeypatch.setattr(load_module, "inspect_images", delete_first)
    second = run()
    assert second.complete and second.run_id != first.run_id
    assert second.manifest["summary"]["findings_by_rule"] == {"missing_image": 1}


def test_full_disk_mid_version_fails_cleanly_and_keeps_the_previous(data, coco_dir, monkeypatch, image_maker):
    run, store, first = data
    for i in range(3):  # three new images: new objects to store
        image_maker(coco_dir / "images" / f"img{i + 1}.jpg", 70 + i, 48, seed=50 + i)
    real = store_module._copy_stream
    stored = []

    def full_after_one(src, dst):
        if stored:
            dst.write(src.read(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        stored.append(1)
        return real(src, dst)

    monkeypatch.setattr(store_module, "_copy_stream", full_after_one)
    with pytest.raises(StepFailed, match="no space left on device") as info:
        run()
    assert "\n" not in str(info.value)
    [failed] = [r for r in store.list_runs("data_load") if r.run_id != first.run_id]
    assert failed.status == "failed" and failed.manifest["outputs"] == {}
    _previous_intact(store, first)
    monkeypatch.setattr(store_module, "_copy_stream", real)
    again = run()  # space freed: the same version is made, reusing the object stored before the failure
    assert again.complete and store.verify_run(again) == []
