"""A store that verifies what it hands out: tampered, torn or hostile stores are refused with the file named,
names from the store never become paths outside it, and failed writes leave no debris."""

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvpipe.pipeline.runner import Runner, StepFailed
from cvpipe.store import ArtifactStore, IntegrityError, InvalidRunId, validate_run_id
from cvpipe.store import store as store_module
from cvpipe.store.hashing import tree_digest


@pytest.fixture
def committed(toy_cfg, tmp_path):
    cfg = toy_cfg()
    src, dbl = Runner(cfg).run(["toy_source", "toy_double"])
    store = ArtifactStore.from_config(cfg)
    store.cache_dir = tmp_path / "cache"
    return store, src, dbl


def _rewrite_manifest(store, rec, change, reread=True):
    path = Path(store.run_path(rec.step, rec.run_id)) / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))
    return store.get_run(rec.run_id, step=rec.step) if reread else None


def _rewrite_index(store, rec, entity, files):
    """What an attacker with write access to a remote store does: index and manifest made consistent."""
    Path(store.index_path(rec.step, rec.run_id, entity)).write_text(json.dumps({"files": files}))
    return _rewrite_manifest(store, rec, lambda m: m["outputs"][entity].update(digest=tree_digest(files)))


def test_run_id_validator():
    assert validate_run_id("20261124T170604885Z-53dc07") == "20261124T170604885Z-53dc07"
    for bad in ["../../../tmp/x", "20261124T170604885Z-53dc07/../../x", "", "latest", None,
                "20261124T170604885Z-53DC07", "/etc/passwd"]:
        with pytest.raises(ValueError):
            validate_run_id(bad)


def test_run_ids_are_checked_wherever_the_store_joins_them(committed, tmp_path):
    store, src, _ = committed
    evil = f"{src.run_id}/../../../../tmp/x"
    with pytest.raises(InvalidRunId):
        store.get_run(evil)
    with pytest.raises(ValueError):
        store.run_path("toy_source", evil)
    with pytest.raises(ValueError):
        store.run_path("../toy_source", src.run_id)
    forged = store_module.RunRecord(evil, "toy_source", src.manifest)
    with pytest.raises(ValueError):
        store.materialize(forged, "numbers")


def test_tampered_file_in_a_committed_run_is_refused_by_name(committed):
    store, _, dbl = committed
    part = Path(store.entity_path(dbl.step, dbl.run_id, "doubled")) / "part2.txt"
    part.write_text("[4, 7]")  # hand-edited, like a model.json
    with pytest.raises(IntegrityError, match="part2.txt"):
        store.materialize(dbl, "doubled")
    planted = part.with_name("extra.txt")
    part.write_text("[4, 6]")
    planted.write_text("x")
    with pytest.raises(IntegrityError, match="extra.txt"):
        store.materialize(dbl, "doubled")
    planted.unlink()
    assert (store.materialize(dbl, "doubled") / "part2.txt").read_text() == "[4, 6]"


def test_a_step_never_reads_a_tampered_input(committed, toy_cfg):
    store, src, _ = committed
    numbers = Path(store.entity_path(src.step, src.run_id, "numbers")) / "numbers.txt"
    numbers.write_text("9\n9\n9\n9")
    with pytest.raises(StepFailed, match=r"IntegrityError: .*numbers.txt"):
        Runner(toy_cfg(), force=True).run_step("toy_double")


def test_zeroed_or_hostile_manifest_digest_is_detected(committed, tmp_path):
    store, src, dbl = committed
    zeroed = _rewrite_manifest(store, dbl, lambda m: m["outputs"]["doubled"].update(digest="0" * 64))
    with pytest.raises(IntegrityError, match="does not hash to the manifest's digest"):
        store.materialize(zeroed, "doubled")
    hostile = _rewrite_manifest(store, src, lambda m: m["outputs"]["blobs"].update(digest="../../../escape"))
    with pytest.raises(IntegrityError, match="not a sha256"):
        store.materialize(hostile, "blobs")
    assert not (tmp_path / "escape").exists() and not (store.cache_dir.parent / "escape").exists()


def test_hostile_index_names_never_become_paths(committed, tmp_path):
    store, src, _ = committed
    digest = next(iter(json.loads(Path(store.index_path(src.step, src.run_id, "blobs")).read_text())["files"].values()))
    for name in ["../../../../escaped.txt", "/tmp/escaped.txt", "a/../../escaped.txt", "..\\escaped.txt"]:
        rec = _rewrite_index(store, src, "blobs", {name: digest})
        with pytest.raises(IntegrityError, match="unsafe"):
            store.materialize(rec, "blobs")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list(store.cache_dir.glob(".tmp-*"))


def test_tampered_object_is_detected_and_stale_cache_rebuilt(committed):
    store, src, _ = committed
    first = store.materialize(src, "blobs")
    assert sorted(p.read_text() for p in first.iterdir()) == ["hello-0", "hello-0", "hello-1", "hello-1"]
    obj = next(Path(store.root, "test", "objects").rglob("*.txt"))
    original = obj.read_bytes()
    obj.write_bytes(b"evil")
    with pytest.raises(IntegrityError, match=r"b\d\.txt"):
        store.materialize(src, "blobs")
    obj.write_bytes(original)
    for link in first.iterdir():  # a cache entry whose links lead nowhere (its store moved) is rebuilt
        link.unlink()
        link.symlink_to("/nonexistent/object")
    assert sorted(p.read_text() for p in store.materialize(src, "blobs").iterdir())[0] == "hello-0"


def test_manifest_naming_another_run_is_ignored(committed):
    store, src, _ = committed
    _rewrite_manifest(store, src, lambda m: m.update(run_id="../../../../tmp/x"), reread=False)
    assert [r.run_id for r in store.list_runs("toy_source")] == []
    with pytest.raises(IntegrityError, match="names another run"):
        store.get_run(src.run_id)


def test_verify_command(committed, toy_config_file):
    from cvpipe.cli.main import app

    store, _, dbl = committed
    cfg = toy_config_file()
    ok = CliRunner().invoke(app, ["verify", "-c", str(cfg)])
    assert ok.exit_code == 0, ok.output
    assert "2 run(s) checked, 0 with problems" in ok.output
    (Path(store.entity_path(dbl.step, dbl.run_id, "doubled")) / "part1.txt").write_text("tampered")
    bad = CliRunner().invoke(app, ["verify", "-c", str(cfg)])
    assert bad.exit_code == 1 and "part1.txt" in bad.output and "1 with problems" in bad.output
    one = CliRunner().invoke(app, ["verify", dbl.run_id, "-c", str(cfg)])
    assert one.exit_code == 1 and "1 run(s) checked" in one.output
    nope = CliRunner().invoke(app, ["verify", "../../etc", "-c", str(cfg)])
    assert nope.exit_code == 1 and "not a run id" in nope.output


def test_full_disk_leaves_no_debris_and_a_failed_run(toy_cfg, tmp_path, monkeypatch, caplog):
    Runner(toy_cfg()).run(["toy_source"])
    real = store_module._copy_stream

    def half_then_enospc(src, dst):
        dst.write(src.read(1))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_copy_stream", half_then_enospc)
    with pytest.raises(StepFailed) as info:
        Runner(toy_cfg()).run_step("toy_double")
    monkeypatch.setattr(store_module, "_copy_stream", real)
    message = str(info.value)
    assert "no space left on device" in message and "\n" not in message and "Traceback" not in message
    assert not [p for p in (tmp_path / "store").rglob(".tmp-*")]
    store = ArtifactStore.from_config(toy_cfg())
    [failed] = store.list_runs("toy_double")
    assert failed.status == "failed" and failed.manifest["outputs"] == {}
    assert "no space left" in failed.manifest["error"]["message"]
    assert Runner(toy_cfg()).run_step("toy_double").complete


def test_an_object_that_changes_while_stored_never_takes_its_name(tmp_path, monkeypatch):
    """A content-addressed file rewritten while it is copied into the store is refused, and no object is left
    under its digest: the store trusts an object by its name from then on."""
    import hashlib

    from cvpipe.store.digests import ChangedWhileReading

    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    staged = tmp_path / "staged"
    staged.mkdir()
    digest = hashlib.sha256(b"the image as digested").hexdigest()
    source = staged / f"{digest}.jpg"
    source.write_bytes(b"the image as digested")
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="p")
    real = store_module._copy_stream

    def rewritten_meanwhile(src, dst):
        with open(source, "r+b") as f:  # another program writes the file while the store copies it
            f.write(b"THE")
        return real(src, dst)

    monkeypatch.setattr(store_module, "_copy_stream", rewritten_meanwhile)
    with pytest.raises(ChangedWhileReading, match="changed while it was stored"):
        store.commit_entity("s", "20261207T000000000Z-abcdef", "images", staged, content_addressed=True)
    assert not Path(store.object_path(digest, ".jpg")).exists()
    assert not list((tmp_path / "store").rglob(".tmp-*"))


def _staged_images(tmp_path: Path, n: int) -> Path:
    import hashlib

    staged = tmp_path / "staged"
    staged.mkdir()
    for i in range(n):
        data = f"image {i}".encode() * 50
        (staged / f"{hashlib.sha256(data).hexdigest()}.jpg").write_bytes(data)
    return staged


def test_new_objects_are_synced_once_not_one_fsync_each(tmp_path, monkeypatch):
    """The objects of a commit reach the disk with one sync of their file system before the index names them,
    not an fsync per image (the wall time of a first version of 100,000 images on a busy disk)."""
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    staged = _staged_images(tmp_path, 20)
    fsyncs, syncs = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(store_module, "_sync", lambda paths: syncs.append(list(paths)))
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="p")
    store.commit_entity("s", "20261207T000000000Z-abcdef", "images", staged, content_addressed=True)
    assert len(syncs) == 1 and len(syncs[0]) == 20 and all(os.path.isfile(p) for p in syncs[0])
    assert len(fsyncs) <= 1  # the index file only
    assert store.verify_run(store_module.RunRecord("20261207T000000000Z-abcdef", "s", {
        "outputs": {"images": {"digest": tree_digest({p.name: p.stem for p in staged.iterdir()}),
                               "content_addressed": True}}})) == []


def test_a_torn_object_is_written_again_not_trusted(tmp_path, monkeypatch):
    """An object cut short (a crash before its sync) is not taken for the content its name says."""
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    staged = _staged_images(tmp_path, 1)
    [image] = list(staged.iterdir())
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="p")
    obj = Path(store.object_path(image.stem, ".jpg"))
    obj.parent.mkdir(parents=True)
    obj.write_bytes(image.read_bytes()[:10])
    store.commit_entity("s", "20261207T000000000Z-abcdef", "images", staged, content_addressed=True)
    assert obj.read_bytes() == image.read_bytes()


@pytest.mark.parametrize("files", [
    {"../x.jpg": "a" * 64},
    {"ok.jpg": "a" * 64, "/abs.jpg": "b" * 64},
    {"ok.jpg": "a" * 64, "..": "b" * 64},
    {"\n".join(["a" * 255] * 17): "a" * 64},  # plain pieces, but a name longer than 4,096
    {"ok.jpg": "a" * 63, "ok2.jpg": "a" * 65},  # lengths that sum to 2 x 64
    {"ok.jpg": "A" * 64},
    {"ok.jpg": "../" + "a" * 61},
    {"ok.jpg": 7},
], ids=["dotdot", "absolute", "parent", "too-long", "uneven-digests", "uppercase", "path-as-digest", "not-text"])
def test_an_index_is_checked_in_bulk_as_strictly_as_entry_by_entry(files):
    """check_index takes plain names and digests in one regex over them all; whatever that does not take is
    checked entry by entry, so a hostile index is refused either way, naming the entry."""
    from cvpipe.store.store import check_index

    with pytest.raises(ValueError):
        check_index(files, "the index of x")
    check_index({"a.jpg": "a" * 64, "sub/b c.png": "b" * 64, "a\nb.jpg": "c" * 64}, "fine")  # safe if unusual
