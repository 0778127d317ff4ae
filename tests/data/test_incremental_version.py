"""A data version written as a change of the previous one (cvpipe.data.incremental) is the version a full run
writes: same tables, findings, source info and image files, so the same entity digests. Only image bytes that
keep their size and stay readable take that path; every other change is a full run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from source_files import settle

from cvpipe.config import build_config
from cvpipe.data.diff import diff_datasets
from cvpipe.data.schema import DetectionData
from cvpipe.pipeline.runner import Runner
from cvpipe.store import ArtifactStore

pytestmark = pytest.mark.usefixtures("own_cache")


def _runner(store: Path, source: Path) -> Runner:
    return Runner(build_config({"store": str(store), "env": "test", "pipeline": "data",
                                "data_load": {"source": str(source), "executor": "serial"},
                                "data_prep": {"executor": "serial", "report_samples": 2}}))


def _load(store: Path, source: Path):
    settle(source)
    return _runner(store, source).run_step("data_load")


def _dataset(store: Path, rec) -> DetectionData:
    return DetectionData.load(ArtifactStore(str(store), env="test", pipeline="data").materialize(rec, "dataset"))


def _same_as_a_full_run(tmp_path: Path, source: Path, rec) -> None:
    """`rec` (in tmp_path/store) equals the first version of `source` in an empty store: outputs, tables."""
    full = _load(tmp_path / "full", source)
    assert "incremental" not in full.manifest["summary"]
    for entity in ("dataset", "images"):
        assert _record(rec, entity) == _record(full, entity), entity
    a, b = _dataset(tmp_path / "store", rec), _dataset(tmp_path / "full", full)
    for table in ("images", "annotations", "categories"):
        assert getattr(a, table).equals(getattr(b, table)), table
    assert a.findings == b.findings and a.source == b.source
    assert _summary(rec) == _summary(full)


def _record(rec, entity: str) -> dict:
    """What the manifest records of an entity but where it lies: its digest, file count and bytes (a patched
    version's bytes are the previous version's, minus and plus what changed)."""
    return {k: v for k, v in rec.output(entity).items() if k != "uri"}


@pytest.fixture(params=["stat each", "list folders"])
def object_check(request, monkeypatch) -> str:
    """How the previous version's objects are found to exist (cvpipe.store.store.LISTED_FROM): these data sets
    are small, so both ways are forced."""
    from cvpipe.store import store

    monkeypatch.setattr(store, "LISTED_FROM", 10**9 if request.param == "stat each" else 1)
    return request.param


def _summary(rec) -> dict:
    return {k: v for k, v in rec.manifest["summary"].items() if k != "incremental"}


def _repaint(path: Path, image_maker, seed: int, size: tuple[int, int] | None = None) -> None:
    from PIL import Image

    w, h = size or Image.open(path).size
    image_maker(path, w, h, seed=seed)


@pytest.mark.usefixtures("object_check")
def test_changed_image_bytes_patch_the_previous_version_as_a_full_run_would(tmp_path, coco_dir, image_maker):
    first = _load(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    _repaint(coco_dir / "images" / "img5.jpg", image_maker, seed=105)
    second = _load(tmp_path / "store", coco_dir)
    assert second.manifest["summary"]["incremental"] == {"from": first.run_id, "changed_images": 2,
                                                         "sources": ["images/img2.jpg", "images/img5.jpg"]}
    assert second.output("images")["digest"] != first.output("images")["digest"]
    _same_as_a_full_run(tmp_path, coco_dir, second)
    change = diff_datasets(_dataset(tmp_path / "store", first), _dataset(tmp_path / "store", second))
    assert change.changed == ["images/img2.jpg", "images/img5.jpg"] and change.labels == change.added == []


def test_an_image_changed_back_shares_the_stored_object_again(tmp_path, coco_dir, image_maker):
    original = (coco_dir / "images" / "img2.jpg").read_bytes()
    first = _load(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    _load(tmp_path / "store", coco_dir)
    (coco_dir / "images" / "img2.jpg").write_bytes(original)
    third = _load(tmp_path / "store", coco_dir)
    assert third.run_id == first.run_id  # the same source again: the first run, reused from the cache


def test_a_version_of_a_duplicate_file_patches_every_row_naming_it(tmp_path, coco_dir, image_maker):
    coco = json.loads((coco_dir / "annotations.json").read_text())
    twin = {**coco["images"][1], "id": 7}  # a second record of img2.jpg
    coco["images"].append(twin)
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    _load(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    second = _load(tmp_path / "store", coco_dir)
    assert second.manifest["summary"]["incremental"]["changed_images"] == 1
    _same_as_a_full_run(tmp_path, coco_dir, second)


@pytest.mark.parametrize("change", ["size", "corrupt", "markup", "added file", "removed file"])
def test_any_other_change_is_a_full_run(tmp_path, coco_dir, image_maker, change):
    _load(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img5.jpg", image_maker, seed=105)  # a change the patch could take, and:
    img = coco_dir / "images" / "img2.jpg"
    if change == "size":
        _repaint(img, image_maker, seed=102, size=(50, 40))
    elif change == "corrupt":
        img.write_bytes(img.read_bytes()[:200])
    elif change == "markup":
        coco = json.loads((coco_dir / "annotations.json").read_text())
        coco["annotations"][0]["bbox"][0] += 1
        (coco_dir / "annotations.json").write_text(json.dumps(coco))
    elif change == "added file":
        image_maker(coco_dir / "images" / "extra.jpg", 30, 30, seed=7)
    else:
        img.unlink()
    second = _load(tmp_path / "store", coco_dir)
    assert "incremental" not in second.manifest["summary"]
    _same_as_a_full_run(tmp_path, coco_dir, second)


def test_other_params_never_patch_a_version_of_other_params(tmp_path, coco_dir, image_maker):
    _load(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    settle(coco_dir)
    cfg = build_config({"store": str(tmp_path / "store"), "env": "test", "pipeline": "data",
                        "data_load": {"source": str(coco_dir), "executor": "serial", "format": "coco"}})
    assert "incremental" not in Runner(cfg).run_step("data_load").manifest["summary"]


def test_data_prep_reads_the_new_image_of_a_patched_version(tmp_path, coco_dir, image_maker):
    _load(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    settle(coco_dir)
    runner = _runner(tmp_path / "store", coco_dir)
    load = runner.run_step("data_load")
    prep = runner.run_step("data_prep")
    assert "incremental" in load.manifest["summary"]
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data")
    view = store.object_view(prep, "images")
    assert view is not None
    blob = _dataset(tmp_path / "store", prep).images.set_index("file_name").at["img2.jpg", "blob"]
    assert Path(view.path(blob)).read_bytes() == (coco_dir / "images" / "img2.jpg").read_bytes()


def test_yolo_image_of_another_size_is_a_full_run_since_its_boxes_scale_with_it(tmp_path, image_maker):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("cat\n")
    for name in ("a", "b"):
        image_maker(root / "images" / f"{name}.jpg", 64, 48, seed=len(name))
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    _load(tmp_path / "store", root)
    _repaint(root / "images" / "a.jpg", image_maker, seed=11, size=(128, 96))
    _repaint(root / "images" / "b.jpg", image_maker, seed=12)
    second = _load(tmp_path / "store", root)
    assert "incremental" not in second.manifest["summary"]
    _same_as_a_full_run(tmp_path, root, second)
    boxes = _dataset(tmp_path / "store", second).annotations
    assert sorted(boxes["w"].tolist()) == [16.0, 32.0]  # b's box 0.25 x 64 px, a's 0.25 x 128 px


@pytest.mark.usefixtures("object_check")
def test_an_object_gone_from_the_previous_version_makes_a_full_run_that_stores_it_again(tmp_path, coco_dir,
                                                                                        image_maker):
    first = _load(tmp_path / "store", coco_dir)
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data")
    index = store.read_json(store.index_path("data_load", first.run_id, "images"))
    first_file = min(index["files"])
    gone = Path(store.object_path(index["files"][first_file], Path(first_file).suffix))
    gone.unlink()
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    second = _load(tmp_path / "store", coco_dir)
    assert "incremental" not in second.manifest["summary"]
    assert store.verify_run(second) == [] and gone.is_file()


def test_a_full_run_after_a_markup_edit_links_no_image_the_store_already_has(tmp_path, coco_dir, monkeypatch):
    from cvpipe.data import load

    _load(tmp_path / "store", coco_dir)
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["annotations"][0]["bbox"][0] += 1
    (coco_dir / "annotations.json").write_text(json.dumps(coco))
    linked = []
    real = load.copy_or_link
    monkeypatch.setattr(load, "copy_or_link", lambda src, dest: (linked.append(dest.name), real(src, dest)))
    second = _load(tmp_path / "store", coco_dir)
    assert "incremental" not in second.manifest["summary"] and linked == []
    _same_as_a_full_run(tmp_path, coco_dir, second)
    assert len(linked) == 6  # the empty store's first version links every image


# ---- data_prep ----------------------------------------------------------------------------------------------
def _prep(store: Path, source: Path):
    settle(source)
    runner = _runner(store, source)
    runner.run_step("data_load")
    return runner.run_step("data_prep")


def _prep_same_as_a_full_run(tmp_path: Path, source: Path, rec) -> None:
    full = _prep(tmp_path / "full", source)
    assert "incremental" not in full.manifest["summary"]
    for entity in ("dataset", "images", "report"):
        assert _record(rec, entity) == _record(full, entity), entity
    assert _summary(rec) == _summary(full)


@pytest.mark.usefixtures("object_check")
def test_data_prep_patches_its_previous_version_as_a_full_run_would(tmp_path, coco_dir, image_maker):
    first = _prep(tmp_path / "store", coco_dir)
    _repaint(coco_dir / "images" / "img2.jpg", image_maker, seed=102)
    _repaint(coco_dir / "images" / "img5.jpg", image_maker, seed=105)
    second = _prep(tmp_path / "store", coco_dir)
    assert second.manifest["summary"]["incremental"] == {"from": first.run_id}
    _prep_same_as_a_full_run(tmp_path, coco_dir, second)


def _twin_of_img2(coco_dir: Path) -> None:
    """img7.jpg: the same bytes as img2.jpg, a second image record (a duplicate_image)."""
    (coco_dir / "images" / "img7.jpg").write_bytes((coco_dir / "images" / "img2.jpg").read_bytes())
    coco = json.loads((coco_dir / "annotations.json").read_text())
    coco["images"].append({**coco["images"][1], "id": 7, "file_name": "img7.jpg"})
    (coco_dir / "annotations.json").write_text(json.dumps(coco))


@pytest.mark.parametrize("change", ["no longer a duplicate", "now a duplicate", "no longer decodes"])
def test_data_prep_runs_whole_when_a_verdict_changes(tmp_path, coco_dir, image_maker, change):
    if change != "no longer decodes":
        _twin_of_img2(coco_dir)
    if change == "now a duplicate":
        _repaint(coco_dir / "images" / "img7.jpg", image_maker, seed=107)
    _prep(tmp_path / "store", coco_dir)
    img2 = coco_dir / "images" / "img2.jpg"
    if change == "no longer a duplicate":
        _repaint(img2, image_maker, seed=102)
    elif change == "now a duplicate":
        img2.write_bytes((coco_dir / "images" / "img7.jpg").read_bytes())
    else:
        _repaint(img2, image_maker, seed=102)
        img2.write_bytes(img2.read_bytes()[:-400])  # the header intact, the pixels cut short
    second = _prep(tmp_path / "store", coco_dir)
    runner_load = second.manifest["inputs"]["dataset"]["run_id"]
    store = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="data")
    assert "incremental" in store.get_run(runner_load, "data_load").manifest["summary"]  # data_load patched
    assert "incremental" not in second.manifest["summary"]  # data_prep did not
    _prep_same_as_a_full_run(tmp_path, coco_dir, second)


def test_a_patched_data_prep_keeps_the_split_a_full_run_draws(tmp_path, image_maker):
    """40 images of one class: the split follows the images' order alone, so a split that moved with the bytes
    (an order by content digest) would differ between the patched version and a full run."""
    root = tmp_path / "many"
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(1, 41):
        image_maker(root / "images" / f"{i}.jpg", 24, 16, seed=i)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 24, "height": 16})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                       "categories": [{"id": 1, "name": "cat"}]}))
    _prep(tmp_path / "store", root)
    for i in (3, 17, 29):
        _repaint(root / "images" / f"{i}.jpg", image_maker, seed=100 + i)
    second = _prep(tmp_path / "store", root)
    assert "incremental" in second.manifest["summary"]
    _prep_same_as_a_full_run(tmp_path, root, second)


@pytest.mark.parametrize("drawn", [True, False], ids=["a drawn image changed", "no drawn image changed"])
def test_a_patched_data_prep_keeps_its_report_unless_an_image_it_draws_changed(tmp_path, coco_dir, image_maker,
                                                                              monkeypatch, drawn):
    """The report draws images chosen by path (report_candidates), so a change to another image's bytes leaves
    it as it was: the previous report is kept, not drawn again. Either way it is the report a full run writes."""
    from cvpipe.data import report
    from cvpipe.data.report import report_candidates

    first = _prep(tmp_path / "store", coco_dir)
    images = _dataset(tmp_path / "store", first).images
    candidates = report_candidates(images, 4, 0)  # report_samples 2 (see _runner), seed 0
    assert 0 < len(candidates) < len(images)
    pick = images[images["image_id"].isin(candidates) == drawn]["file_name"].iloc[0]
    _repaint(coco_dir / "images" / pick, image_maker, seed=200)
    written, write = [], report.write_report
    monkeypatch.setattr(report, "write_report", lambda *a, **k: written.append(1) or write(*a, **k))
    second = _prep(tmp_path / "store", coco_dir)
    assert second.manifest["summary"]["incremental"] == {"from": first.run_id}
    assert len(written) == drawn
    monkeypatch.undo()
    kept = second.output("report")["digest"] == first.output("report")["digest"]
    assert kept != drawn
    _prep_same_as_a_full_run(tmp_path, coco_dir, second)


def test_a_patched_version_reads_only_the_images_tables(tmp_path, coco_dir, image_maker, monkeypatch):
    """Boxes, categories and findings of a patched version are the previous version's files, copied: neither
    data_load nor data_prep reads them (650,000 boxes and 90,000 findings at 100,000 images) when the report
    draws none of the changed images."""
    import traceback

    from cvpipe.data import schema
    from cvpipe.data.report import report_candidates

    first = _prep(tmp_path / "store", coco_dir)
    images = _dataset(tmp_path / "store", first).images
    pick = images[~images["image_id"].isin(report_candidates(images, 4, 0))]["file_name"].iloc[0]
    _repaint(coco_dir / "images" / pick, image_maker, seed=102)
    read = []
    for part, reader in list(schema._PART_READERS.items()):
        monkeypatch.setitem(schema._PART_READERS, part, lambda d, part=part, reader=reader: read.append(
            (part, "".join(traceback.format_stack(limit=12)))) or reader(d))
    second = _prep(tmp_path / "store", coco_dir)
    assert second.manifest["summary"]["incremental"]
    assert {part for part, _ in read} <= {"source"}, read  # source.json: data_load's format
    monkeypatch.undo()
    _prep_same_as_a_full_run(tmp_path, coco_dir, second)
