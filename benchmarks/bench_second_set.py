"""Does the main job's recipe, unchanged, gain on data it was never tuned on? (issue 21, item 4)

    .venv/bin/python benchmarks/bench_second_set.py [--wheel deepforest-2.1.0-py3-none-any.whl]
                                                    [--work build/tree_crowns] [--set model_train.epochs=N]

1. benchmarks/make_tree_crowns.py cuts the NEON tree-crown images of the DeepForest wheel into 416 px VOC tiles
   (test = 3 whole held-out images) under WORK/voc;
2. `cvpipe run configs/tree_crowns.yaml --to model_eval` in the fresh store WORK/store: data_load -> data_prep ->
   model_train -> model_pack -> model_eval, with the recipe of configs/example.yaml (the config differs only in
   its data and name; --set changes more, and the report then says so);
3. prints the tiles / boxes per split, model_train's wall time with the load average around it, and model_eval's
   "what fine-tuning gained": the packed model vs the model training started from, AP and AP50 on the test tiles
   with the paired-bootstrap interval.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tree_crowns import main as make_tiles

CONFIG = Path("configs/tree_crowns.yaml")


class LoadSampler:
    """The 1-minute load average every `every` s while a command runs (the machine may be shared)."""

    def __init__(self, every: float = 30.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])


def run_pipeline(store: Path, voc: Path, overrides: list[str]) -> float:
    sets = [f"store={store}", f"data_load.source={voc}", *overrides]
    cmd = [sys.executable, "-m", "cvpipe.cli.main", "run", str(CONFIG), "--to", "model_eval",
           *(a for kv in sets for a in ("--set", kv))]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    return time.perf_counter() - t0


def report(store_url: Path, overrides: list[str], tiles: dict, total_s: float, load: list[float]) -> dict:
    from cvpipe.config import load_config
    from cvpipe.store import ArtifactStore

    store = ArtifactStore.from_config(load_config(CONFIG, [f"store={store_url}", *overrides]))
    train = store.latest_run("model_train")
    evaluation = store.latest_run("model_eval")
    prep = store.latest_run("data_prep")
    if train is None or evaluation is None or prep is None:
        raise SystemExit(f"the pipeline left no complete data_prep / model_train / model_eval run in {store_url}")
    ts, gain = train.manifest["summary"], evaluation.manifest["summary"]["gain"]
    train_s = float(train.manifest.get("duration_s") or ts["seconds"])
    print("\ntiles (images) and boxes per split, by source image:")
    for split, by_source in tiles["splits"].items():
        n_tiles = sum(c["tiles"] for c in by_source.values())
        n_boxes = sum(c["boxes"] for c in by_source.values())
        most = max(c["most_boxes_in_a_tile"] for c in by_source.values())
        print(f"  {split:<5} {n_tiles:>4} tiles {n_boxes:>5} boxes (at most {most} in a tile) from "
              + ", ".join(by_source))
    print(f"data_prep kept: {prep.manifest['summary'].get('splits')}; findings "
          f"{prep.manifest['summary'].get('findings')}")
    print(f"model_train: {ts['epochs']} epochs x {ts['train_images']} tiles, {train_s:.0f} s wall; val AP "
          f"{ts['start_ap']:.4f} (start) -> {ts['best_ap']:.4f} (best.pt = epoch {ts['best_epoch']})")
    print(f"load average (1 min) while the pipeline ran: min {min(load):.1f}, mean {sum(load) / len(load):.1f}, "
          f"max {max(load):.1f} ({len(load)} samples); whole pipeline {total_s:.0f} s on {os.cpu_count()} CPUs")
    if gain is None:
        raise SystemExit("model_eval reported no gain over the start (no start packed?)")
    print(f"\nmodel_eval on the {gain['images']} held-out test tiles: {gain['message']}")
    stats = evaluation.manifest["summary"]
    print("packed model, COCO stats on the test tiles: " + ", ".join(
        f"{k} {v:.3f}" for k, v in load_metrics(store, evaluation)["stats"].items() if k in SHOWN_STATS))
    by_source = per_source_scores(store, train)
    for name, row in by_source.items():
        print(f"  {name:<40} {row['images']:>3} tiles {row['boxes']:>4} boxes: best.pt AP {row['AP']:.3f} "
              f"AP50 {row['AP50']:.3f}; start AP {row['start_AP']:.3f} AP50 {row['start_AP50']:.3f}")
    return {"by_source": by_source, "packed_AP": stats["AP"], "packed_AP50": stats["AP50"],
            "tiles": tiles, "model_train_s": train_s, "pipeline_s": total_s, "load_1min": load,
            "train": {k: ts[k] for k in ("epochs", "train_images", "start_ap", "best_ap", "best_epoch")},
            "gain": gain, "overrides": overrides}


SHOWN_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AR100", "AR_small", "AR_medium")


def load_metrics(store, evaluation) -> dict:
    return json.loads((store.materialize(evaluation, "metrics") / "metrics.json").read_text())


def per_source_scores(store, train_run) -> dict[str, dict]:
    """best.pt and start.pt of a model_train run on the test tiles of each held-out source image (the
    training's own evaluator): is the gain the same at the training image's site and at the other two?"""
    import torch

    from cvpipe.data.schema import DetectionDataset
    from cvpipe.training.checkpoints import Checkpoints
    from cvpipe.training.validation import evaluate_model

    prep = store.get_run(train_run.manifest["inputs"]["dataset"]["run_id"], step="data_prep")
    test = DetectionDataset.load(store.materialize(prep, "dataset")).split("test")
    images = store.materialize(prep, "images")
    ck = Checkpoints.load(store.materialize(train_run, "checkpoints"))
    models = {"": ck.load_model()[0], "start_": ck.load_model("start")[0]}
    size = int((ck.input_size or [416])[0])
    source = test.images["file_name"].map(lambda f: Path(f).stem.rsplit("_", 2)[0])
    rows = {}
    for name in [*sorted(set(source)), "all"]:
        imgs = test.images[(source == name) | (name == "all")]
        anns = test.annotations[test.annotations["image_id"].isin(imgs["image_id"])]
        part = DetectionDataset.build(imgs, anns, test.categories)
        row: dict = {"images": len(imgs), "boxes": len(anns)}
        for prefix, model in models.items():
            stats = evaluate_model(model, part, images, size, torch.device("cpu"))
            row |= {f"{prefix}AP": stats["AP"], f"{prefix}AP50": stats["AP50"]}
        rows[name] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help="a local deepforest-2.1.0-py3-none-any.whl (default: pip download)")
    ap.add_argument("--work", type=Path, default=Path("build/tree_crowns"), help="scratch folder (emptied first)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override beyond the recipe, e.g. --set model_train.epochs=5 (reported)")
    ap.add_argument("--report-only", action="store_true", help="only print the results of the run in --work")
    args = ap.parse_args()
    work = args.work.resolve()
    if args.report_only:
        earlier = json.loads((work / "result.json").read_text())
        report(work / "store", earlier["overrides"], earlier["tiles"], earlier["pipeline_s"], earlier["load_1min"])
        return
    shutil.rmtree(work, ignore_errors=True)
    tiles = make_tiles([str(work / "voc"), *(["--wheel", str(args.wheel)] if args.wheel else [])])
    with LoadSampler() as load:
        total_s = run_pipeline(work / "store", work / "voc", args.overrides)
    result = report(work / "store", args.overrides, tiles, total_s, load.samples)
    (work / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"written: {work / 'result.json'}")


if __name__ == "__main__":
    main()
