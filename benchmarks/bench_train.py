"""Training throughput on this machine: data loading (with augmentation) vs the model's optimizer step; or the
time of a whole model_train step of a config (BCCD: the issue-21 target of <= 5 minutes on an idle 2-core
machine).

    .venv/bin/python benchmarks/bench_train.py [--coco examples/coco_sample] [--steps 3] [--batch 8]
    .venv/bin/python benchmarks/bench_train.py --config configs/bccd.yaml      # model_train on BCCD, then its
                                                                               # best.pt scored on the test split

With --config it runs `cvpipe run CONFIG --to model_train` in a fresh temporary store (the step's own code path:
data_load, data_prep, then model_train), and prints model_train's wall time, training images/s, the load
average before and after (the machine may be shared: the number is only comparable to an idle one when the
load stays under ~0.5) and best.pt's AP / AP50 on the test split. Nothing is asserted.

For YOLOX-Nano at 416 and YOLOX-S at 416 / 640 (random init, full model trained, batch 8) it prints images/s of
(1) the DataLoader alone (mosaic + affine + mixup + HSV + flip, workers=0), (2) the model step alone
(forward + loss + backward + SGD + EMA on a ready batch) and (3) both together, with their ratios; then the time
of one real epoch of the example config (nano-ONNX un-folded, every layer trained, 416 px) on the sample, as
wall time and process CPU time (on a shared machine the CPU time / cores is the better estimate of idle time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cvpipe.data.schema import DetectionDataset
from cvpipe.training.params import TrainParams
from cvpipe.training.run import run_training
from cvpipe.training.trainer import Trainer, TrainOutputs, seed_everything


def dataset_from_coco(src: Path, out: Path, n_train: int = 75) -> tuple[Path, Path, int]:
    """A DetectionDataset (first n_train images train, the rest val) + images dir from a COCO folder."""
    coco = json.loads((src / "annotations.json").read_text())
    images_dir = out / "images"
    images_dir.mkdir(parents=True)
    rows = []
    for k, im in enumerate(sorted(coco["images"], key=lambda i: i["id"])):
        data = (src / "images" / im["file_name"]).read_bytes()
        blob = hashlib.sha256(data).hexdigest() + Path(im["file_name"]).suffix
        (images_dir / blob).write_bytes(data)
        rows.append(dict(image_id=im["id"], file_name=im["file_name"], width=im["width"], height=im["height"],
                         blob=blob, split="train" if k < n_train else "val"))
    anns = [dict(ann_id=a["id"], image_id=a["image_id"], category_id=a["category_id"], x=a["bbox"][0],
                 y=a["bbox"][1], w=a["bbox"][2], h=a["bbox"][3], area=a["area"], iscrowd=a["iscrowd"])
            for a in coco["annotations"]]
    cats = [dict(category_id=c["id"], name=c["name"], label=i)
            for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))]
    ds_dir = out / "dataset"
    DetectionDataset.build(rows, anns, cats).save(ds_dir)
    return ds_dir, images_dir, min(n_train, len(rows))


def bench_one(scale: str, size: int, ds_dir: Path, images_dir: Path, batch: int, steps: int, tmp: Path) -> dict:
    from cvpipe.models.yolox import build_yolox

    ds = DetectionDataset.load(ds_dir)
    p = TrainParams(scale=scale, pretrained="none", img_size=size, batch_size=batch, epochs=10, no_aug_epochs=1,
                    eval_interval=1000, device="cpu", workers=0)
    seed_everything(0)
    trainer = Trainer(p, build_yolox(scale, len(ds.class_names)), ds.split("train"), None, images_dir,
                      TrainOutputs(tmp / "ck", tmp / "cu"))
    trainer.sampler.set_epoch(0)  # an augmented epoch
    it = iter(trainer.loader)
    next(it)  # warm the image cache: steady-state loading, as from the second epoch on
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(steps)]
    load_s = (time.perf_counter() - t0) / steps

    net = trainer.net.train()

    def step(images, targets):
        trainer.set_lr()
        loss = net(images, targets)["total_loss"]
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.ema.update(trainer.model)
        trainer.iteration += 1

    step(*batches[0][:2])  # warm-up
    t0 = time.perf_counter()
    for images, targets, _ in batches:
        step(images, targets)
    step_s = (time.perf_counter() - t0) / steps
    return {"model": f"{scale}@{size}", "load_img_s": batch / load_s, "step_img_s": batch / step_s,
            "train_img_s": batch / (load_s + step_s), "load_share": load_s / (load_s + step_s)}


def bench_model_train(config: Path, overrides: list[str]) -> None:
    """`cvpipe run CONFIG --to model_train` in a fresh store; model_train's time, img/s and best.pt's test AP."""
    from cvpipe.config import load_config
    from cvpipe.store import ArtifactStore

    with tempfile.TemporaryDirectory() as tmpdir:
        store_url = str(Path(tmpdir) / "store")
        sets = [f"store={store_url}", *overrides]
        load_before = os.getloadavg()
        cmd = [sys.executable, "-m", "cvpipe.cli.main", "run", str(config), "--to", "model_train",
               *(a for kv in sets for a in ("--set", kv))]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
        total = time.perf_counter() - t0
        load_after = os.getloadavg()
        store = ArtifactStore.from_config(load_config(config, sets))
        run = store.latest_run("model_train")
        summary = run.manifest["summary"]
        step_s = float(run.manifest.get("duration_s") or summary["seconds"])
        images = summary["epochs"] * summary["train_images"]
        test = test_split_scores(store, run)
        epochs = epoch_rows(store.materialize(run, "curves") / "metrics.csv")
        train_s = sum(float(r["seconds"]) for r in epochs)
        print(f"\nmodel_train of {config} ({summary['epochs']} epochs x {summary['train_images']} train images, "
              f"img {summary['hyperparameters'].get('img_size')}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads)")
        print(f"  model_train step: {step_s:.1f} s wall ({step_s / 60:.2f} min); training loop "
              f"{summary['seconds']:.1f} s = {images / summary['seconds']:.1f} img/s (incl. validation); "
              f"whole command (data_load + data_prep + model_train) {total:.1f} s")
        print(f"  training steps alone (no validation): {train_s:.1f} s = {images / train_s:.1f} img/s, "
              f"{train_s / len(epochs):.1f} s an epoch (augmented epochs "
              f"{mean_seconds(epochs, 'True'):.1f} s, plain {mean_seconds(epochs, 'False'):.1f} s)")
        print(f"  load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
              f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
        print(f"  val AP {summary['start_ap']:.4f} (start) -> {summary['best_ap']:.4f} (best.pt = epoch "
              f"{summary['best_epoch']}); best.pt on the {test['images']} test images: AP {test['AP']:.4f}, "
              f"AP50 {test['AP50']:.4f}, AP75 {test['AP75']:.4f}")


def epoch_rows(metrics_csv: Path) -> list[dict]:
    """The trained epochs of curves/metrics.csv (epoch 0, the start, has no training steps)."""
    import csv

    with open(metrics_csv, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) > 0]


def mean_seconds(rows: list[dict], augment: str) -> float:
    picked = [float(r["seconds"]) for r in rows if r["augment"] == augment]
    return sum(picked) / len(picked) if picked else float("nan")


def test_split_scores(store, train_run) -> dict:
    """best.pt of a model_train run scored on its data_prep run's test split (the training's own evaluator)."""
    from cvpipe.training.checkpoints import Checkpoints
    from cvpipe.training.validation import evaluate_model

    inputs = train_run.manifest["inputs"]
    prep = store.get_run(inputs["dataset"]["run_id"], step="data_prep")
    ds = DetectionDataset.load(store.materialize(prep, "dataset"))
    images = store.materialize(prep, "images")
    ck = Checkpoints.load(store.materialize(train_run, "checkpoints"))
    model, _ = ck.load_model()
    test = ds.split("test")
    stats = evaluate_model(model, test, images, int(ck.input_size[0]), torch.device("cpu"))
    return {"images": len(test.images), **stats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coco", type=Path, default=Path("examples/coco_sample"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", default="nano@416,s@416,s@640")
    ap.add_argument("--config", type=Path, help="time model_train of this pipeline config instead (e.g. "
                                                 "configs/bccd.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for --config, e.g. --set model_train.epochs=15")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.config is not None:
        bench_model_train(args.config, args.overrides)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.steps} timed steps")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ds_dir, images_dir, n_train = dataset_from_coco(args.coco, tmp / "data")
        rows = []
        for spec in args.configs.split(","):
            scale, size = spec.split("@")
            rows.append(bench_one(scale, int(size), ds_dir, images_dir, args.batch, args.steps, tmp / spec))
        print(f"\n{'model':<10}{'loader img/s':>14}{'step img/s':>12}{'train img/s':>13}{'loader/step':>13}"
              f"{'load share':>12}")
        for r in rows:
            print(f"{r['model']:<10}{r['load_img_s']:>14.1f}{r['step_img_s']:>12.2f}{r['train_img_s']:>13.2f}"
                  f"{r['load_img_s'] / r['step_img_s']:>13.1f}{r['load_share']:>11.0%}")
        base = rows[0]["train_img_s"]
        print("train speed relative to " + rows[0]["model"] + ": " +
              ", ".join(f"{r['model']} {r['train_img_s'] / base:.2f}x" for r in rows))

        # one epoch of the example config: nano from the ONNX, un-folded, all layers, 416 px
        for epochs, no_aug in ((1, 1), (1, 0)):
            p = TrainParams(scale="nano", pretrained="nano-onnx", img_size=416, epochs=epochs, batch_size=8,
                            no_aug_epochs=no_aug, workers=0, device="cpu")
            outs = {n: tmp / f"example{no_aug}" / n for n in ("checkpoints", "curves", "test_image")}
            t0, c0 = time.perf_counter(), time.process_time()
            s = run_training(p, ds_dir, images_dir, outs)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"example epoch (nano-onnx@416, {n_train} train imgs, {'no aug' if no_aug else 'mosaic+mixup'}): "
                  f"{total:.1f} s wall, {cpu:.1f} s CPU, incl. val of {s['val_images']} imgs (epoch 0 and 1) "
                  f"and model load; val AP start {s['start_ap']:.4f} -> {s['best_ap']:.4f} best")


if __name__ == "__main__":
    main()
