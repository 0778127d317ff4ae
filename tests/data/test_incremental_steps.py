"""data_load and data_prep redo only what changed: an unchanged image's header and decode verdict are reused
(cached by its content digest), the new data version shares the unchanged files with the old one in the store
(one object per content, never a link to the user's file), and `cvpipe diff` says what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from source_files import settle
from typer.testing import CliRunner

from cvpipe.cli.main import app
from cvpipe.config import build_config
from cvpipe.data import load as data_load_module
from cvpipe.data import validate as validate_module
from cvpipe.data.diff import diff_datasets
from cvpipe.data.schema import DetectionData, ImageFiles
from cvpipe.pipeline.runner import Runner
from cvpipe.store import ArtifactStore

pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How many image headers data_load read and how many images data_prep decoded."""
    calls = {"headers": 0, "decodes": 0}
    real_header, real_check = data_load_module.read_header_fact, validate_module.check_image

    def header(job):
        calls["headers"] += 1
        return real_header(job)

    def check(job):
        calls["decodes"] += 1
        return real_check(job)

    monkeypatch.setattr(data_load_module, "read_header_fact", header)
    monkeypatch.setattr(validate_module, "check_image", check)
    return calls


@pytest.fixture
def version(tmp_path, coco_dir):
    """version() -> (data_load run, data_prep run) of coco_dir in one store."""
    settle(coco_dir)
    cfg = build_config({"store": str(tmp_path / "store"), "env": "test", "pipeline": "data",
                        "data_load": {"source": str(coco_dir), "executor": "serial"},
                        "data_prep": {"executor": "serial", "report_samples": 0}})

    def run():
        runner = Runner(cfg)
        return runner.run_step("data_load"), runner.run_step("data_prep")

    run.store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data")
    return run


def _objects(store: ArtifactStore, rec, entity: str = "images") -> dict[str, str]:
    """{file name: its object's URI}, as the index names them (a digest and a suffix)."""
    index = store.read_json(store.index_path(rec.step, rec.run_id, entity))
    return {rel: store.uri(store.object_path(d, Path(rel).suffix.lower())) for rel, d in index["files"].items()}


def _dataset(store: ArtifactStore, rec) -> DetectionData:
    return DetectionData.load(store.materialize(rec, "dataset"))


def test_one_changed_image_is_the_only_one_read(version, coco_dir, counted, image_maker):
    load1, prep1 = version()
    assert counted == {"headers": 6, "decodes": 6}
    image_maker(coco_dir / "images" / "img3.jpg", 80, 48, seed=99)
    settle(coco_dir / "images")
    counted.update(headers=0, decodes=0)
    load2, prep2 = version()
    assert load2.run_id != load1.run_id and prep2.run_id != prep1.run_id
    assert counted == {"headers": 1, "decodes": 1}
    old, new = _objects(version.store, load1), _objects(version.store, load2)
    shared = set(old.values()) & set(new.values())
    assert len(shared) == 5 and len(set(new.values()) - set(old.values())) == 1  # 5 shared, 1 new object
    assert _dataset(version.store, prep2).images.shape[0] == 6


def test_an_annotation_change_reads_no_image(version, coco_dir, counted):
    version()
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["annotations"][0]["bbox"] = [11, 10, 20, 30]
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    settle(coco_dir)
    counted.update(headers=0, decodes=0)
    load2, prep2 = version()
    assert counted == {"headers": 0, "decodes": 0}
    assert float(_dataset(version.store, prep2).annotations.query("ann_id == 1")["x"].iloc[0]) == 11.0


def test_no_change_reuses_both_runs_without_reading(version, counted):
    first = version()
    counted.update(headers=0, decodes=0)
    assert [r.run_id for r in version()] == [r.run_id for r in first]
    assert counted == {"headers": 0, "decodes": 0}


def test_store_objects_are_copies_not_links_to_the_users_files(version, coco_dir):
    load1, _ = version()
    src = coco_dir / "images" / "img1.jpg"
    objects = [Path(p.removeprefix("file://")) for p in _objects(version.store, load1).values()]
    assert all(o.stat().st_ino != src.stat().st_ino for o in objects)
    with open(src, "r+b") as f:  # an in-place edit of the user's file ...
        f.seek(-10, 2)
        f.write(b"\0" * 10)
    assert version.store.verify_run(load1) == []  # ... leaves the stored version as it was


def test_diff_lists_added_removed_changed_and_relabelled(version, coco_dir, tmp_path, image_maker):
    load1, prep1 = version()
    coco = json.loads((coco_dir / "annotations.json").read_text())
    image_maker(coco_dir / "images" / "img2.jpg", 72, 48, seed=77)  # changed bytes
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 5]  # img5 relabelled (box gone)
    coco["images"] = [im for im in coco["images"] if im["id"] != 6]  # img6 removed
    image_maker(coco_dir / "images" / "[bold]new.jpg", 64, 48, seed=5)  # a name that looks like markup
    coco["images"].append({"id": 9, "file_name": "[bold]new.jpg", "width": 64, "height": 48})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    (coco_dir / "images" / "img6.jpg").unlink()
    settle(coco_dir)
    load2, prep2 = version()
    d = diff_datasets(_dataset(version.store, load1), _dataset(version.store, load2))
    assert (d.added, d.removed, d.changed, d.labels) == (["images/[bold]new.jpg"], ["images/img6.jpg"],
                                                         ["images/img2.jpg"], ["images/img5.jpg"])
    assert d.unchanged == 3
    config = tmp_path / "cfg.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\nenv: test\npipeline: data\n")
    result = CliRunner().invoke(app, ["diff", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["old"] == load1.run_id and got["new"] == load2.run_id and got["removed"] == ["images/img6.jpg"]
    table = CliRunner().invoke(app, ["diff", prep1.run_id, prep2.run_id, "-c", str(config)],
                               env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    assert "1 added, 1 removed, 1 changed, 1 relabelled" in table.stdout
    assert "[bold]new.jpg" in table.stdout  # shown as it is named, never read as markup
    assert max(len(line) for line in table.stdout.splitlines()) <= 80


def test_diff_needs_two_versions(version, tmp_path):
    version()
    config = tmp_path / "cfg.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\nenv: test\npipeline: data\n")
    result = CliRunner().invoke(app, ["diff", "-c", str(config), "--step", "data_prep"])
    assert result.exit_code == 1 and "1 other complete run" in result.output


def test_coco_json_is_written_on_demand_from_a_version(version, tmp_path):
    load1, prep1 = version()
    for rec in (load1, prep1):  # no version stores a COCO JSON: it is written from the tables when asked
        assert not [f for f in version.store.entity_files(rec, "dataset") if f.endswith(".json") and "coco" in f]
    config = tmp_path / "cfg.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\nenv: test\npipeline: data\n")
    ds = _dataset(version.store, prep1)
    for split in ("train", "val", "test"):
        out = tmp_path / f"{split}.json"
        result = CliRunner().invoke(app, ["coco", "-c", str(config), "--split", split, "-o", str(out)])
        assert result.exit_code == 0, result.output
        coco = json.loads(out.read_text())
        want = ds.images[ds.images["split"] == split]
        assert sorted(im["file_name"] for im in coco["images"]) == sorted(want["blob"])
        assert len(coco["annotations"]) == ds.annotations["image_id"].isin(want["image_id"]).sum()
    whole = tmp_path / "all.json"
    assert CliRunner().invoke(app, ["coco", load1.run_id, "-c", str(config), "-o", str(whole)]).exit_code == 0
    assert len(json.loads(whole.read_text())["images"]) == len(_dataset(version.store, load1).images)
    bad = CliRunner().invoke(app, ["coco", "-c", str(config), "--split", "holdout", "-o", str(tmp_path / "x.json")])
    assert bad.exit_code == 1 and "unknown split" in bad.output and not (tmp_path / "x.json").exists()


def test_data_prep_reads_the_images_through_the_store_and_commits_an_index(version, tmp_path):
    """No folder of links is built for data_load's images, and data_prep's images are recorded as the same
    objects, with the digest a folder of those files would have had; the version reads back and verifies."""
    from cvpipe.store.hashing import tree_digest

    load1, prep1 = version()
    assert not (version.store.cache_dir / load1.output("images")["digest"]).exists()
    kept = _dataset(version.store, prep1).images
    files = dict(zip(kept["blob"], kept["digest"]))
    record = prep1.output("images")
    assert record["digest"] == tree_digest(files) and record["files"] == len(files) and record["bytes"] > 0
    assert _objects(version.store, prep1) == _objects(version.store, load1)  # the very same objects
    built = []
    images = ImageFiles.from_store(version.store.object_view(prep1, "images"),
                                   lambda: built.append(1) or version.store.materialize(prep1, "images"))
    blob = next(iter(files))
    assert images.path(blob).read_bytes() and not built  # read through: no folder yet
    folder = images.directory  # a step that wants a folder (training) gets one, built on first use
    assert built == [1] and sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert (folder / blob).read_bytes() == images.path(blob).read_bytes()
    assert version.store.verify_run(prep1) == []
    saved = tmp_path / "saved"  # saved without a store behind (a step called by hand): the kept files only
    images.subset([blob]).save(saved)
    assert [p.name for p in saved.iterdir()] == [blob] and (saved / blob).read_bytes() == images.path(blob).read_bytes()


def test_a_stored_object_changed_after_commit_is_refused_when_read_through(version):
    from cvpipe.store import IntegrityError

    load1, _ = version()
    obj = Path(next(iter(_objects(version.store, load1).values())).removeprefix("file://"))
    obj.chmod(0o644)
    with open(obj, "r+b") as f:  # same size, other bytes, a new mtime
        f.seek(-10, 2)
        f.write(b"\1" * 10)
    with pytest.raises(IntegrityError, match="changed after the run was committed"):
        version.store.object_view(load1, "images")
    obj.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        version.store.object_view(load1, "images")


def _tamper(obj: Path) -> None:
    obj.chmod(0o644)
    with open(obj, "r+b") as f:  # same size, other bytes, a new mtime
        f.seek(-10, 2)
        f.write(b"\1" * 10)


def test_read_through_images_are_checked_when_read_one_by_one_then_all_at_once(version, monkeypatch):
    from cvpipe.store import IntegrityError

    load1, _ = version()
    store = version.store
    view = store.object_view(load1, "images", verify=False)
    checked: list[list[str]] = []

    def verify(names):
        checked.append(list(names))
        store.verify_objects(view, names)

    blobs = sorted(view.digests)
    bad = blobs[-1]
    _tamper(Path(view.path(bad)))
    images = ImageFiles.from_store(view, lambda: store.materialize(load1, "images"), verify)
    images.path(blobs[0])
    images.path(blobs[0])  # checked once
    assert checked == [[blobs[0]]]
    with pytest.raises(IntegrityError, match=f"{bad} was changed after the run was committed"):
        images.path(bad)
    monkeypatch.setattr(ImageFiles, "CHECKED_ONE_BY_ONE", 1)
    images = ImageFiles.from_store(view, lambda: store.materialize(load1, "images"), verify)
    checked.clear()
    images.path(blobs[0])
    with pytest.raises(IntegrityError, match=bad):  # the second read checks all the rest in one batch
        images.path(blobs[1])
    assert checked == [[blobs[0]], blobs[1:]]


def test_data_prep_refuses_a_stored_image_changed_after_data_load_committed_it(version, tmp_path, coco_dir):
    """data_prep reads the images it draws in its report (their decode verdicts are cached by content, so
    validation reads none here): the one changed in the store is refused as it is read."""
    from cvpipe.store import IntegrityError

    load1, _ = version()
    _tamper(Path(next(iter(_objects(version.store, load1).values())).removeprefix("file://")))
    cfg = build_config({"store": str(tmp_path / "store"), "env": "test", "pipeline": "data",
                        "data_load": {"source": str(coco_dir), "executor": "serial"},
                        "data_prep": {"executor": "serial", "report_samples": 3}})  # a new run, drawing all 6
    with pytest.raises(Exception, match="changed after the run was committed") as failed:
        Runner(cfg).run_step("data_prep")
    assert isinstance(failed.value, IntegrityError) or "IntegrityError" in repr(failed.value.__cause__)


def test_an_index_commit_names_only_stored_objects(version):
    from cvpipe.store.store import StoredFiles

    load1, _ = version()
    view = version.store.object_view(load1, "images")
    blob = next(iter(view.digests))
    elsewhere = StoredFiles(view.root + "/../elsewhere", view.digests, view.nbytes)
    with pytest.raises(ValueError, match="is not the object folder of this store"):
        version.store.commit_stored("data_prep", load1.run_id, "images", elsewhere)
    forged = StoredFiles(view.root, {**view.digests, "../x.jpg": view.digests[blob]}, view.nbytes)
    with pytest.raises(ValueError, match="unsafe file name"):
        version.store.commit_stored("data_prep", load1.run_id, "images", forged)
    with pytest.raises(ValueError, match="not one of these files"):
        view.subset([blob, "f" * 64 + ".jpg"])


def test_the_next_step_reads_a_view_this_store_just_committed_without_a_stat_per_object(version, monkeypatch):
    """data_prep, run after data_load by the same runner, gets data_load's images as the view data_load's commit
    made (every object there: checked or stored by that commit), not by a stat per object; another store
    instance (another process) checks them all."""
    import os

    from cvpipe.store.store import IntegrityError

    load1, _ = version()
    store = ArtifactStore(str(version.store.url), env="test", pipeline="data")
    view = store.object_view(load1, "images", verify=False)
    record = store.commit_stored("data_load", "20261207T000000000Z-aaaaaa", "images", view)
    rec = load1.__class__("20261207T000000000Z-aaaaaa", "data_load", {"outputs": {"images": record}})
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    again = store.object_view(rec, "images", verify=False)
    assert stats == [] and again.digests == view.digests and again.nbytes == view.nbytes
    monkeypatch.undo()
    Path(view.path(next(iter(view.digests)))).unlink()
    other = ArtifactStore(str(version.store.url), env="test", pipeline="data")
    with pytest.raises(IntegrityError, match="missing"):
        other.object_view(rec, "images", verify=False)
    forged = load1.__class__(rec.run_id, "data_load", {"outputs": {"images": {**record, "digest": "0" * 64}}})
    with pytest.raises(IntegrityError):  # another record than the one committed: read and checked as usual
        store.object_view(forged, "images", verify=False)


@pytest.mark.parametrize("recorded", [-1, "12 MB", True, None])
def test_a_view_whose_manifest_misstates_its_bytes_measures_them(version, recorded):
    """A view that only checks its objects exist takes its total size from the manifest; a record that is not a
    size (a hand-edited manifest) is not believed: the objects are stat'ed and summed."""
    load1, _ = version()
    store = ArtifactStore(str(version.store.url), env="test", pipeline="data")
    view = store.object_view(load1, "images")
    record = {**load1.output("images"), "bytes": recorded}
    rec = load1.__class__(load1.run_id, "data_load", {"outputs": {"images": record}})
    again = store.object_view(rec, "images", verify=False)
    assert again.nbytes == view.nbytes == sum(Path(view.path(n)).stat().st_size for n in view.digests) > 0


def test_an_index_this_store_just_committed_is_linked_not_written_again(version):
    """data_prep keeping all of data_load's images commits the same index: the runner's store links the file it
    just wrote (one 10 MB write less at 10^5 images); gone, it is written again. Either way the index verifies."""
    import os

    load1, prep1 = version()
    store = version.store
    load_index, prep_index = (store.index_path(r.step, r.run_id, "images") for r in (load1, prep1))
    assert prep1.output("images")["digest"] == load1.output("images")["digest"]
    assert os.path.samefile(load_index, prep_index)
    assert store.entity_files(prep1, "images") == store.entity_files(load1, "images")

    view = store.object_view(load1, "images")
    writer = ArtifactStore(str(store.url), env="test", pipeline="data")
    first = writer.commit_stored("data_prep", "20261207T000000000Z-aaaaaa", "images", view)
    os.unlink(writer.index_path("data_prep", "20261207T000000000Z-aaaaaa", "images"))
    second = writer.commit_stored("data_prep", "20261207T000000000Z-bbbbbb", "images", view)
    again = writer.index_path("data_prep", "20261207T000000000Z-bbbbbb", "images")
    assert second["digest"] == first["digest"] and os.path.isfile(again)
    assert json.loads(Path(again).read_text())["files"] == view.digests
