"""`cvpipe labels ...`: read the label-error queues of the data_qa step, send them to a labelling tool
(Label Studio tasks or a CVAT XML file) and bring the corrections back as a new data version.

    cvpipe step data_qa -c CONFIG                  # the queues, the self-test, report.html
    cvpipe labels queues -c CONFIG                 # the first entries of every queue, with its self-test line
    cvpipe labels export -c CONFIG --to label-studio --out tasks.json    (or --to cvat --out queue.xml)
    cvpipe labels push -c CONFIG --url http://localhost:8080 --token T   # a Label Studio project with the tasks
    cvpipe labels pull --url ... --token T --project 3 --out export.json
    cvpipe labels import export.json -c CONFIG --out data/corrected      # a new raw data version
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cvpipe.cli.common import (
    AllowPluginOpt,
    ConfigOpt,
    SetOpt,
    StoreOpt,
    cvpipe_command,
    fail,
    open_store,
    out,
    pick_config,
)

app = typer.Typer(help="Label errors: the data_qa step's ranked queues, and a round trip through Label Studio "
                       "or CVAT. Run `cvpipe step data_qa CONFIG` first.", no_args_is_help=True)
TopOpt = typer.Option(50, "--top", help="Entries taken from each queue.")
UrlOpt = typer.Option(..., "--url", help="Label Studio address, e.g. http://localhost:8080.")
TokenOpt = typer.Option(..., "--token", envvar="LABEL_STUDIO_TOKEN", help="Label Studio access token "
                        "(Account & Settings), or LABEL_STUDIO_TOKEN.")
ImageUrlOpt = typer.Option("/data/local-files/?d={blob}", "--image-url", help="How Label Studio reaches an "
                           "image; {blob} is its file name in the data version's images.")
QaRunOpt = typer.Option(None, "--run", help="data_qa run (default: the latest).")


def _check_run(config: Path | None, overrides, allow_plugins, store, run_id: str | None):
    """(store, data_qa run, data_prep run it checked)."""
    st = open_store(pick_config(None, config), overrides, allow_plugins, store)
    try:
        rec = st.get_run(run_id, step="data_qa") if run_id else st.latest_run("data_qa")
    except (KeyError, ValueError) as e:
        fail(str(e.args[0]) if e.args else f"no data_qa run {run_id!r}")
    if rec is None:
        fail(f"the store has no complete data_qa run: run `{cvpipe_command()} step data_qa -c CONFIG` first")
    prep = st.get_run(rec.manifest["inputs"]["dataset"]["run_id"], step="data_prep")
    return st, rec, prep


def _data(st, prep):
    from cvpipe.data.schema import DetectionDataset

    return DetectionDataset.load(st.materialize(prep, "dataset")), st.materialize(prep, "images")


def queues(
    kind: str | None = typer.Option(None, "--type", help="Only this queue: missing, spurious, wrong_class, "
                                                            "bad_location or duplicate."),
    top: int = typer.Option(10, "--top", help="Entries shown per queue."),
    run_id: str | None = QaRunOpt,
    config: Path | None = ConfigOpt, overrides: list[str] | None = SetOpt,
    allow_plugins: list[str] | None = AllowPluginOpt, store: str | None = StoreOpt,
) -> None:
    """Print the first entries of each queue, each with its self-test line (recall at 2 x injected, precision
    of the first 100): how far to trust it on this data."""
    from cvpipe.labels.find import load_queues
    from cvpipe.labels.report import entry_rows
    from cvpipe.labels.score import ERROR_TYPES

    st, rec, prep = _check_run(config, overrides, allow_plugins, store, run_id)
    ds, _ = _data(st, prep)
    qs = load_queues(st.materialize(rec, "queues"))
    tests = json.loads((st.materialize(rec, "queues") / "summary.json").read_text())["selftest"]
    if kind is not None and kind not in ERROR_TYPES:
        fail(f"unknown queue {kind!r}; the queues: {', '.join(ERROR_TYPES)}", 2)
    for name in [kind] if kind else ERROR_TYPES:
        t = tests.get(name, {})
        table = Table(title=f"{name}: {len(qs[name])} entries; self-test recall {t.get('recall', 0):.2f}, "
                            f"precision@100 {t.get('precision', 0):.2f}", title_justify="left")
        rows = entry_rows(qs[name], ds.class_names, top)
        for col in ("rank", "image", "label", "proposal", "score", "p_error", "AP gain"):
            table.add_column(col, justify="right" if col not in ("label", "proposal") else "left")
        for r in rows:
            table.add_row(*(str(r[c]) for c in ("rank", "image", "label", "proposal", "score", "p_error", "AP gain")))
        out.print(table)
    out.print(f"report: {st.uri(st.entity_path('data_qa', rec.run_id, 'report'))}/report.html", highlight=False)


def export(
    to: str = typer.Option("label-studio", "--to", help="label-studio (tasks JSON) or cvat (CVAT 1.1 XML)."),
    dest: Path = typer.Option(..., "--out", help="File to write."),
    top: int = TopOpt,
    image_url: str = ImageUrlOpt,
    run_id: str | None = QaRunOpt,
    config: Path | None = ConfigOpt, overrides: list[str] | None = SetOpt,
    allow_plugins: list[str] | None = AllowPluginOpt, store: str | None = StoreOpt,
) -> None:
    """Write the first entries of every queue (and unlabelled images, with the model's boxes) for a labelling
    tool: each image once, its current labels and the model's proposals as pre-annotations."""
    st, rec, prep = _check_run(config, overrides, allow_plugins, store, run_id)
    ds, _ = _data(st, prep)
    if to == "cvat":
        from cvpipe.labels.cvat import write_cvat
        from cvpipe.labels.find import load_queues

        n = write_cvat(ds, load_queues(st.materialize(rec, "queues")), top, dest)
        out.print(f"{n} images written to {dest} (CVAT for images 1.1)")
        return
    if to != "label-studio":
        fail(f"--to {to!r}: use label-studio or cvat", 2)
    tasks = _tasks(st, rec, prep, ds, top, image_url)
    dest.write_text(json.dumps(tasks))
    out.print(f"{len(tasks)} tasks written to {dest}")


def _tasks(st, rec, prep, ds, top: int, image_url: str) -> list[dict]:
    import pandas as pd

    from cvpipe.labels.find import load_queues
    from cvpipe.labels.labelstudio import ExportSource, build_tasks

    preds = pd.read_parquet(st.materialize(rec, "predictions") / "predictions.parquet")
    return build_tasks(ds, load_queues(st.materialize(rec, "queues")), top, ExportSource(prep.run_id, image_url),
                       preds)


def push(
    url: str = UrlOpt, token: str = TokenOpt, top: int = TopOpt,
    title: str = typer.Option("cvpipe label check", "--title", help="Project title."),
    image_url: str = ImageUrlOpt,
    run_id: str | None = QaRunOpt,
    config: Path | None = ConfigOpt, overrides: list[str] | None = SetOpt,
    allow_plugins: list[str] | None = AllowPluginOpt, store: str | None = StoreOpt,
) -> None:
    """Create a Label Studio project with the queue's tasks (through its REST API)."""
    from cvpipe.labels.labelstudio import LabelStudio, label_config

    st, rec, prep = _check_run(config, overrides, allow_plugins, store, run_id)
    ds, _ = _data(st, prep)
    client = LabelStudio(url, token)
    try:
        project = client.create_project(title, label_config(ds.class_names))
        n = client.import_tasks(project, _tasks(st, rec, prep, ds, top, image_url))
    except (RuntimeError, OSError) as e:
        fail(str(e))
    out.print(f"project {project}: {n} tasks at {url.rstrip('/')}/projects/{project}")


def pull(
    url: str = UrlOpt, token: str = TokenOpt,
    project: int = typer.Option(..., "--project", help="Label Studio project id."),
    dest: Path = typer.Option(..., "--out", help="Where to save the JSON export."),
) -> None:
    """Save a Label Studio project's JSON export (then `cvpipe labels import` it)."""
    from cvpipe.labels.labelstudio import LabelStudio

    try:
        tasks = LabelStudio(url, token).export(project)
    except (RuntimeError, OSError) as e:
        fail(str(e))
    dest.write_text(json.dumps(tasks))
    out.print(f"{len(tasks)} tasks saved to {dest}")


def import_(
    export_file: Path = typer.Argument(..., help="Label Studio JSON export (`cvpipe labels pull` or the UI)."),
    dest: Path = typer.Option(..., "--out", help="New folder for the corrected data version (COCO)."),
    run_id: str | None = typer.Option(None, "--data-run", help="data_prep run the tasks were made from "
                                         "(default: the one the tasks name)."),
    config: Path | None = ConfigOpt, overrides: list[str] | None = SetOpt,
    allow_plugins: list[str] | None = AllowPluginOpt, store: str | None = StoreOpt,
) -> None:
    """Apply the corrections of a Label Studio export to the data version it was made from, as a new COCO folder.
    Anything that does not fit (unknown labels, boxes outside the image, images not in the data version, a
    malformed file) is refused with every problem listed, and nothing is written."""
    from cvpipe.data.schema import DetectionDataset
    from cvpipe.labels.corrections import write_corrected_version
    from cvpipe.labels.labelstudio import ImportRejected, corrected_boxes, read_export

    config = pick_config(None, config)
    st = open_store(config, overrides, allow_plugins, store)
    try:
        tasks = read_export(export_file)
        named = {t["data"].get("cvpipe_run") for t in tasks if isinstance(t.get("data"), dict)} - {None}
        run = run_id or (named.pop() if len(named) == 1 else None)
        if run is None:
            raise ImportRejected([f"the tasks name {len(named)} data versions {sorted(named)}: give --data-run"])
        prep = st.get_run(run, step="data_prep")
        ds = DetectionDataset.load(st.materialize(prep, "dataset"))
        corrections = corrected_boxes(tasks, ds, run)
        result = write_corrected_version(ds, st.materialize(prep, "images"), corrections, dest)
    except (ImportRejected, FileExistsError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    out.print(f"corrected data version written to {dest}: {result['images_corrected']} images corrected "
              f"({result['boxes_before']} boxes -> {result['boxes_after']})")
    _print_held_out_ap(st, prep, ds, corrections)
    out.print(f"retrain from it: {cvpipe_command()} run {config} --set data_load.source={dest} "
              f"--set data_prep.split_from_source=true", highlight=False)


def _print_held_out_ap(st, prep, ds, corrections) -> None:
    """Before/after AP on the test split with the data_qa predictions of this data version, where there are any."""
    import pandas as pd

    from cvpipe.labels.corrections import held_out_ap

    checks = [r for r in st.list_runs("data_qa") if r.complete and
              (r.manifest.get("inputs") or {}).get("dataset", {}).get("run_id") == prep.run_id]
    if not checks:
        return
    preds = pd.read_parquet(st.materialize(checks[-1], "predictions") / "predictions.parquet")
    ap = held_out_ap(ds, corrections, preds)
    out.print(f"held-out {ap['split']} split ({ap['images']} images, {ap['images_corrected']} corrected): AP of the "
              f"out-of-fold predictions {ap['ap_before']:.2f} against the old labels, {ap['ap_after']:.2f} against "
              f"the corrected ones")


def register(root: typer.Typer) -> None:
    for command in (queues, export, push, pull):
        app.command(help=command.__doc__)(command)
    app.command("import", help=import_.__doc__)(import_)
    root.add_typer(app, name="labels")
