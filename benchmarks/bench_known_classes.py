"""Does fine-tuning on classes the model knows damage it? (issue 21.) A config's model_train recipe, trained
exactly as the step trains it, scored after every epoch on images the model never trained on, with the paired
bootstrap interval of each epoch's AP against the start (the start is the same model at epoch 0).

    .venv/bin/python benchmarks/bench_known_classes.py --config configs/coco.yaml \\
        --held-out ../shared/data/coco_real/dev --seed 0 [--set freeze_backbone=true] [--out DIR]

The config's data_load + data_prep run first (a fresh temporary store) to get its split. HELD-OUT = the COCO
val2017 images (per `coco_url`) of the --held-out folder (annotations.json + images/) that are not in that
train split: never seen by the fine-tune, nor by the pretraining of COCO weights. Each epoch's evaluated model
(the EMA, as the step evaluates it) is scored on the held-out images and on the config's own val split, with
`cvpipe.evaluation.bootstrap.paired_bootstrap` (1,000 resamples) against epoch 0. One JSON row per epoch is
printed and written to OUT/rows.json. Nothing is asserted. A run of configs/coco.yaml took ~15 minutes on the
shared 2-core machine at load average ~20 (not timed idle).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from cvpipe.data.schema import DetectionDataset
from cvpipe.evaluation.bootstrap import paired_bootstrap
from cvpipe.evaluation.engine import predict_split
from cvpipe.inference.torch_predictor import TorchPredictor
from cvpipe.training.model_init import build_model
from cvpipe.training.params import TrainParams
from cvpipe.training.run import calibration_batches, training_splits
from cvpipe.training.trainer import Trainer, TrainOutputs, seed_everything
from cvpipe.training.validation import NMS_THR, SCORE_THR, dataset_classmap


def prepared_dataset(config: Path, store: Path) -> tuple[DetectionDataset, Path]:
    """(prepared dataset with blob = file name, its images folder) after the config's data_load + data_prep."""
    subprocess.run([sys.executable, "-m", "cvpipe.cli.main", "run", str(config), "--to", "data_prep",
                    "--set", f"store={store}"], check=True, capture_output=True)
    ds = DetectionDataset.load(next(store.glob("*/*/data_prep/*/dataset")))
    source = Path(yaml.safe_load(config.read_text())["data_load"]["source"])
    return DetectionDataset.build(ds.images.assign(blob=ds.images["file_name"]), ds.annotations,
                                  ds.categories), source / "images"


def held_out_split(folder: Path, train: DetectionDataset, categories) -> DetectionDataset:
    """COCO val2017 images of `folder` that are not in `train`, labelled like the prepared dataset."""
    coco = json.loads((folder / "annotations.json").read_text())
    trained = set(train.images["image_id"])
    keep = {i["id"] for i in coco["images"] if "val2017" in i.get("coco_url", "") and i["id"] not in trained}
    rows = [dict(image_id=i["id"], file_name=i["file_name"], width=i["width"], height=i["height"],
                 blob=i["file_name"], split="held_out") for i in coco["images"] if i["id"] in keep]
    anns = [dict(ann_id=a["id"], image_id=a["image_id"], category_id=a["category_id"], x=a["bbox"][0],
                 y=a["bbox"][1], w=a["bbox"][2], h=a["bbox"][3], area=a["area"], iscrowd=a.get("iscrowd", 0))
            for a in coco["annotations"] if a["image_id"] in keep]
    return DetectionDataset.build(rows, anns, categories)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/coco.yaml"))
    ap.add_argument("--held-out", type=Path, required=True, help="COCO folder: annotations.json + images/")
    ap.add_argument("--seed", type=int, default=0, help="training seed (model_train.seed); the split is the config's")
    ap.add_argument("--set", action="append", default=[], help="model_train KEY=VALUE (YAML value), repeatable")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="known_classes_"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    ds, images_dir = prepared_dataset(args.config, work / "store")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = yaml.safe_load(args.config.read_text())["model_train"]
    params = TrainParams(**{**cfg, "seed": args.seed, "device": "cpu", **overrides})
    train, val = training_splits(ds, params)
    held = held_out_split(args.held_out, train, ds.categories)
    seed_everything(params.seed)
    model, info = build_model(params.scale, len(ds.class_names), params.pretrained, True, ds.class_names,
                              calibration_batches(train, images_dir, params.img_size), params.keep_fused)
    trainer = Trainer(params, model, train, val, images_dir, TrainOutputs(work / "ck", work / "curves"),
                      {"pretrained": info})
    splits = {"held_out": (held.to_coco(), args.held_out / "images"), "val": (val.to_coco(), images_dir)}

    def predictions() -> dict[str, list[dict]]:
        # eval mode; the next epoch puts a trained (non-EMA) model back in train mode (Trainer.train_epoch)
        predictor = TorchPredictor(trainer.eval_model.eval(), (params.img_size, params.img_size), SCORE_THR, NMS_THR,
                                   device=torch.device("cpu"))
        return {name: predict_split(predictor, gt, folder, dataset_classmap(ds), 8, desc=name).results
                for name, (gt, folder) in splits.items()}

    start = predictions()
    rows: list[dict] = []

    def report() -> None:
        last = trainer.history[-1] if trainer.history else {"epoch": 0, "lr": 0.0}
        now = predictions() if rows else start
        row = {"epoch": last["epoch"], "lr": last["lr"], "seed": args.seed, "set": overrides,
               "time": time.strftime("%H:%M:%S")}
        for name, (gt, _) in splits.items():
            b = paired_bootstrap(gt, now[name], start[name], resamples=1000, seed=0)
            row[name] = {"images": b["images"], "start_ap": round(b["reference_ap"], 4),
                         "ap": round(b["candidate_ap"], 4), "delta": round(b["delta"], 4),
                         "ci95": [round(x, 4) for x in b["ci"]]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))

    report()
    trainer.on_saved = report
    trainer.fit()


if __name__ == "__main__":
    main()
