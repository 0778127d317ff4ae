"""The round trip without a server: the whole check on 12 real images, Label Studio tasks and CVAT XML from its
queues, corrections read back into a new data version that data_load and data_prep accept, and hostile exports
refused with every problem named and nothing written."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from cvpipe.data.schema import DetectionDataset
from cvpipe.labels.corrections import write_corrected_version
from cvpipe.labels.cvat import write_cvat
from cvpipe.labels.find import LabelCheckParams, find_label_errors, load_queues
from cvpipe.labels.labelstudio import (
    ExportSource,
    ImportRejected,
    corrected_boxes,
    label_config,
    read_export,
    region,
)
from cvpipe.labels.oof import OOFParams


@pytest.fixture(scope="module")
def checked(prepared):
    """The check run once on the 12 images with the pretrained model (no tiles, to stay fast)."""
    dataset, images = prepared
    root = dataset.parent
    params = LabelCheckParams(oof=OOFParams(scheme="pretrained", tiles=False), selftest_seeds=2, report_top=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVPIPE_CACHE", str(root / "cache"))
        summary = find_label_errors(dataset, images, params, root / "predictions", root / "queues", root / "report")
        again = find_label_errors(dataset, images, params, root / "p2", root / "q2", None)
    summary["again_cached"] = again["predictions"]["cached"]
    return DetectionDataset.load(dataset), images, load_queues(root / "queues"), summary, root


def test_the_check_writes_queues_selftest_and_report(checked):
    ds, _, queues, summary, root = checked
    assert summary["predictions"]["cached"] is False
    assert set(summary["selftest"]) == {"missing", "spurious", "wrong_class", "bad_location", "duplicate", "overall",
                                      "merged"}
    for q in queues.values():
        assert list(q["rank"]) == list(range(1, len(q) + 1))
        assert q["score"].is_monotonic_decreasing
    html = (root / "report" / "report.html").read_text()
    assert html.count("data:image/jpeg;base64") >= 3 and "noise rate" in html
    rates = pd.read_csv(root / "queues" / "noise_rates.csv")
    assert set(rates["class"]) == set(ds.class_names)
    assert summary["again_cached"] is True  # same data digest and settings: no second prediction


def _export(ds: DetectionDataset, edits: dict[int, list]) -> list[dict]:
    """A Label Studio export: one annotated task per image in `edits` (class name, xyxy px)."""
    images = ds.images.set_index("image_id")
    tasks = []
    for n, (image_id, boxes) in enumerate(edits.items()):
        w, h = int(images.loc[image_id, "width"]), int(images.loc[image_id, "height"])
        result = [region(b, name, w, h, f"r{k}") for k, (name, b) in enumerate(boxes)]
        tasks.append({"id": n + 1, "data": {"image": "x", "cvpipe_image_id": int(image_id), "cvpipe_run": "RUN",
                                            "cvpipe_blob": images.loc[image_id, "blob"]},
                      "annotations": [{"id": 10 + n, "result": result, "was_cancelled": False,
                                       "updated_at": "2026-01-01T00:00:00"}]})
    return tasks


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_corrections_become_a_data_version_data_prep_accepts(checked, tmp_path):
    from cvpipe.config import load_config
    from cvpipe.pipeline.runner import Runner

    ds, images, _, _, _ = checked
    first = int(ds.images["image_id"].iloc[0])
    edits = {first: [(ds.class_names[0], [10, 10, 60, 80]), (ds.class_names[-1], [100, 50, 150, 90])]}
    result = write_corrected_version(ds, images, corrected_boxes(_export(ds, edits), ds, "RUN"), tmp_path / "v2")
    assert result["images_corrected"] == 1 and result["boxes_after"] == 2
    config = tmp_path / "v2.yaml"
    config.write_text(f"store: {tmp_path / 'store'}\npipeline: v2\ndata_load: {{source: {tmp_path / 'v2'}, "
                      f"format: coco}}\ndata_prep: {{split_from_source: true, executor: serial}}\n")
    runner = Runner(load_config(config))
    _, prep_run = runner.run(["data_load", "data_prep"])
    new = DetectionDataset.load(runner.store.materialize(prep_run, "dataset"))
    boxes = new.annotations[new.annotations["image_id"] == first]
    assert sorted(boxes["w"].round(3)) == [50.0, 50.0]
    assert len(new.annotations) == len(ds.annotations) - int((ds.annotations["image_id"] == first).sum()) + 2
    old_split = dict(zip(ds.images["image_id"].astype(int), ds.images["split"]))
    assert dict(zip(new.images["image_id"].astype(int), new.images["split"])) == old_split  # same held-out images


@pytest.mark.parametrize("case, needle", [
    ("unknown_label", "unknown label ['zebra-ish']"),
    ("out_of_image", "outside the image"),
    ("foreign_image", "is not in this data version"),
    ("other_version", "exported from data version"),
    ("not_json", "not JSON"),
    ("not_a_list", "is a list of task objects"),
])
def test_hostile_exports_are_refused_and_change_nothing(checked, tmp_path, case, needle):
    ds, images, _, _, root = checked
    first = int(ds.images["image_id"].iloc[0])
    tasks = _export(ds, {first: [(ds.class_names[0], [10, 10, 60, 80])]})
    value = tasks[0]["annotations"][0]["result"][0]["value"]
    if case == "unknown_label":
        value["rectanglelabels"] = ["zebra-ish"]
    elif case == "out_of_image":
        value["x"], value["width"] = 90.0, 30.0
    elif case == "foreign_image":
        tasks[0]["data"]["cvpipe_image_id"] = 999999999
    elif case == "other_version":
        tasks[0]["data"]["cvpipe_run"] = "SOME-OTHER-RUN"
    path = tmp_path / "export.json"
    path.write_text({"not_json": "[{'id': 1,", "not_a_list": json.dumps({"tasks": tasks})}.get(case, json.dumps(tasks)))
    before = _tree_digest(root / "dataset"), _tree_digest(images)
    with pytest.raises(ImportRejected) as err:
        write_corrected_version(ds, images, corrected_boxes(read_export(path), ds, "RUN"), tmp_path / "v2")
    assert needle in str(err.value) and "nothing was written" in str(err.value)
    assert not (tmp_path / "v2").exists() and not list(tmp_path.glob(".v2.*"))
    assert (_tree_digest(root / "dataset"), _tree_digest(images)) == before


def test_every_problem_of_an_export_is_listed(checked):
    ds, *_ = checked
    ids = [int(i) for i in ds.images["image_id"].head(3)]
    tasks = _export(ds, {i: [("nope", [1, 1, 5, 5])] for i in ids})
    with pytest.raises(ImportRejected) as err:
        corrected_boxes(tasks, ds, "RUN")
    assert len(err.value.problems) == 3 and all(f"task {n}" in str(err.value) for n in (1, 2, 3))


def test_tasks_and_cvat_xml_carry_labels_and_proposals(checked, tmp_path):
    from cvpipe.labels.labelstudio import build_tasks

    ds, _, queues, _, root = checked
    preds = pd.read_parquet(root / "predictions" / "predictions.parquet")
    tasks = build_tasks(ds, queues, 5, ExportSource("RUN"), preds)
    assert len({t["data"]["cvpipe_image_id"] for t in tasks}) == len(tasks)  # one task per image
    regions = [r for t in tasks for r in t["predictions"][0]["result"]]
    assert any(r["id"].startswith("ann-") for r in regions) and any(r["id"].startswith("proposal-") for r in regions)
    assert all(0 <= r["value"]["x"] <= 100 and r["value"]["rectanglelabels"][0] in ds.class_names for r in regions)
    assert "<RectangleLabels" in label_config(ds.class_names) and ds.class_names[0] in label_config(ds.class_names)
    n = write_cvat(ds, queues, 5, tmp_path / "queue.xml")
    root_el = ET.parse(tmp_path / "queue.xml").getroot()
    assert root_el.findtext("version") == "1.1" and len(root_el.findall("image")) == n > 0
    labels = {el.findtext("name") for el in root_el.iter("label")}
    boxes = list(root_el.iter("box"))
    assert labels == set(ds.class_names) and boxes and all(b.get("label") in labels for b in boxes)
    assert {b.findtext("attribute") for b in boxes} <= {"label", "proposal"}


@pytest.fixture(scope="module")
def stored_version(checked, tmp_path_factory):
    """The 12 images as a data_prep run in a store (through data_load and data_prep), and its config."""
    from cvpipe.config import load_config
    from cvpipe.pipeline.runner import Runner

    ds, images, *_ = checked
    root = tmp_path_factory.mktemp("stored")
    write_corrected_version(ds, images, {}, root / "v1")
    config = root / "v1.yaml"
    config.write_text(f"store: {root / 'store'}\npipeline: v1\ndata_load: {{source: {root / 'v1'}, format: coco}}\n"
                      f"data_prep: {{split_from_source: true, executor: serial}}\n")
    runner = Runner(load_config(config))
    _, prep = runner.run(["data_load", "data_prep"])
    return DetectionDataset.load(runner.store.materialize(prep, "dataset")), prep.run_id, config


@pytest.mark.slow  # data_load + data_prep through the runner: ~20 s idle
def test_cli_import_applies_a_good_export_and_refuses_a_bad_one(stored_version, tmp_path):
    from typer.testing import CliRunner

    from cvpipe.cli.main import app

    ds, run_id, config = stored_version
    first = int(ds.images["image_id"].iloc[0])
    good = _export(ds, {first: [(ds.class_names[0], [5, 5, 40, 40])]})
    for t in good:
        t["data"]["cvpipe_run"] = run_id
    bad = json.loads(json.dumps(good))
    bad[0]["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["no-such-class"]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    cli = CliRunner()
    refused = cli.invoke(app, ["labels", "import", str(tmp_path / "bad.json"), "-c", str(config), "--out",
                               str(tmp_path / "bad_out")])
    assert refused.exit_code == 1 and "no-such-class" in " ".join(refused.output.split())
    assert not (tmp_path / "bad_out").exists()
    applied = cli.invoke(app, ["labels", "import", str(tmp_path / "good.json"), "-c", str(config), "--out",
                               str(tmp_path / "good_out")])
    assert applied.exit_code == 0, applied.output
    assert "1 images corrected" in " ".join(applied.output.split())
    assert (tmp_path / "good_out" / "annotations.json").is_file()
    helped = cli.invoke(app, ["labels", "--help"])
    assert all(c in helped.output for c in ("queues", "export", "push", "pull", "import"))


def test_held_out_ap_before_and_after_follows_the_corrections(checked):
    from cvpipe.labels.corrections import held_out_ap

    ds, _, _, _, root = checked
    preds = pd.read_parquet(root / "predictions" / "predictions.parquet")
    test_ids = [int(i) for i in ds.images.loc[ds.images["split"] == "test", "image_id"]]
    # "corrections" that make the test labels exactly the model's confident boxes: it can only score better
    confident = preds[preds["score"] >= 0.3]
    agree = {i: [(ds.class_names[int(r.label)], [r.x1, r.y1, r.x2, r.y2])
                 for r in confident[confident["image_id"] == i].itertuples()] for i in test_ids}
    ap = held_out_ap(ds, agree, preds)
    assert ap["images"] == len(test_ids) == ap["images_corrected"]
    assert ap["ap_after"] > ap["ap_before"] and ap["ap_after"] > 90
    assert held_out_ap(ds, {}, preds)["ap_after"] == ap["ap_before"]  # nothing corrected, nothing changes


def test_the_data_qa_step_reads_data_prep_and_fills_its_outputs(prepared, tmp_path, monkeypatch):
    from step_context import run_step, step_context

    from cvpipe.pipeline.step import get_step

    spec = get_step("data_qa")
    assert {i.step for i in spec.inputs.values()} == {"data_prep"}
    assert set(spec.outputs) == {"predictions", "queues", "report"}
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    ctx = step_context(tmp_path / "run", "data_qa")
    params = spec.params(oof={"scheme": "pretrained", "tiles": False}, selftest_seeds=1, report_top=1)
    summary = run_step(ctx, params, dataset=prepared[0], images=prepared[1])
    assert summary["images"] == 12 and set(summary["queues"]) == {"missing", "spurious", "wrong_class",
                                                                  "bad_location", "duplicate"}
    assert (ctx.output("report") / "report.html").is_file() and (ctx.output("queues") / "queues.parquet").is_file()
    assert (ctx.output("predictions") / "predictions.parquet").is_file()


def test_a_failure_while_writing_leaves_no_folder_behind(checked, tmp_path, monkeypatch):
    import cvpipe.labels.corrections as corrections

    ds, images, *_ = checked
    calls = []

    def failing_copy(src, dest):
        calls.append(src)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        dest.write_bytes(b"x")

    monkeypatch.setattr(corrections, "copy_or_link", failing_copy)
    with pytest.raises(OSError):
        write_corrected_version(ds, images, {}, tmp_path / "v2")
    assert not (tmp_path / "v2").exists() and list(tmp_path.iterdir()) == []
