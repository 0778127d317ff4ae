"""Label check: scorer speed (images/s, against a per-image loop baseline in the same run) and the self-test on
the shared real COCO dev images (recall at 2 x injected, precision of the first 100, over independent seeds).

    .venv/bin/python benchmarks/bench_labels.py [--seeds 10] [--first-seed 10] [--scheme pretrained] [--flip]
        [--img-size 416]

The predictions are cached (CVPIPE_CACHE/oof) by data digest, so a second run only scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cvpipe.data.schema import DetectionDataset
from cvpipe.labels.boxes import BoxTable, labels_of
from cvpipe.labels.oof import OOFParams, out_of_fold_predictions
from cvpipe.labels.score import score_labels
from cvpipe.labels.selftest import self_test, summarize
from cvpipe.vision.boxes import box_iou

# the shared folder beside the checkout (or beside the folder of worktrees the checkout is in)
COCO_DEV = next((p / "shared" / "data" / "coco_real" / "dev" for p in Path(__file__).resolve().parents[2:4]
                 if (p / "shared" / "data" / "coco_real" / "dev").is_dir()),
                Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_real" / "dev")


def synthetic(images: int, labels_per: int = 9, preds_per: int = 75, seed: int = 0) -> tuple[BoxTable, BoxTable]:
    """Boxes with COCO dev's density: 9 labels and 75 predictions (score >= 0.005) per image."""
    rng = np.random.default_rng(seed)

    def table(per: int, scores: bool) -> BoxTable:
        n = images * per
        xy = rng.uniform(0, 560, (n, 2))
        return BoxTable.build(np.repeat(np.arange(images), per), rng.integers(0, 80, n),
                              np.concatenate([xy, xy + rng.uniform(4, 200, (n, 2))], 1),
                              rng.uniform(0.005, 1, n) if scores else None, np.arange(n))

    return table(labels_per, False), table(preds_per, True)


def loop_baseline(labels: BoxTable, preds: BoxTable) -> None:
    """Only the first piece of evidence (best same-class score at IoU >= 0.5), one image at a time."""
    for image in np.unique(labels.image_id):
        lm, pm = labels.image_id == image, preds.image_id == image
        iou = box_iou(labels.xyxy[lm], preds.xyxy[pm])
        same = labels.label[lm][:, None] == preds.label[pm][None, :]
        np.where((iou >= 0.5) & same, preds.score[pm][None, :], 0).max(1, initial=0)


def tiled_copies(labels: BoxTable, preds: BoxTable, images: int) -> tuple[BoxTable, BoxTable]:
    """Real labels and predictions repeated under new image ids until there are `images` images."""
    ids = np.unique(labels.image_id)
    copies = -(-images // len(ids))
    step = int(max(labels.image_id.max(), preds.image_id.max())) + 1

    def rep(t: BoxTable) -> BoxTable:
        offs = np.repeat(np.arange(copies) * step, len(t))
        return BoxTable.build(np.tile(t.image_id, copies) + offs, np.tile(t.label, copies),
                              np.tile(t.xyxy, (copies, 1)), np.tile(t.score, copies),
                              np.tile(t.ann_id, copies) + offs)

    return rep(labels), rep(preds)


def bench_speed(labels: BoxTable, preds: BoxTable, what: str) -> None:
    images = len(np.unique(labels.image_id))
    score_labels(labels, preds)  # warm-up
    runs = []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        score_labels(labels, preds)
        runs.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    t, c = time.perf_counter(), time.process_time()
    loop_baseline(labels, preds)
    loop, loop_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"\nscorer on {images:,} images ({what}), best of 3:")
    print(f"  all five queues: {images / wall:,.0f} images/s wall, {images / cpu:,.0f} images/s of CPU time")
    print(f"  baseline, a per-image loop computing only the first piece of the scorer's evidence: "
          f"{images / loop:,.0f} images/s wall, {images / loop_cpu:,.0f} of CPU time "
          f"(the scorer, doing all five queues, is {loop_cpu / cpu:.1f}x faster in CPU time)")


def coco_dev(folder: Path) -> tuple[DetectionDataset, Path]:
    """The shared COCO dev folder as a DetectionDataset (COCO's 80 classes, labels in id order)."""
    coco = json.loads((folder / "annotations.json").read_text())
    images = [{"image_id": i["id"], "file_name": i["file_name"], "width": i["width"], "height": i["height"],
               "digest": hashlib.sha256((folder / "images" / i["file_name"]).read_bytes()).hexdigest(),
               "blob": i["file_name"], "extra": json.dumps({"coco_url": i.get("coco_url", "")})}
              for i in coco["images"]]
    anns = [{"ann_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "x": a["bbox"][0],
             "y": a["bbox"][1], "w": a["bbox"][2], "h": a["bbox"][3], "area": a["area"], "iscrowd": a["iscrowd"]}
            for a in coco["annotations"]]
    cats = [{"category_id": c["id"], "name": c["name"], "supercategory": c["supercategory"], "label": k}
            for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))]
    return DetectionDataset.build(images, anns, cats), folder / "images"


def bench_selftest(folder: Path, seeds: int, first_seed: int, oof: OOFParams, images: int) -> None:
    if not folder.is_dir():
        print(f"{folder} not found (--coco-dev): speed on synthetic boxes only, no self-test")
        bench_speed(*synthetic(images), "synthetic: 9 labels and 75 predictions per image")
        return
    ds, images_dir = coco_dev(folder)
    t = time.perf_counter()
    frame, info = out_of_fold_predictions(ds, images_dir, oof)
    print(f"\nout-of-fold predictions ({oof.model_dump(include={'scheme', 'tiles', 'flip', 'img_size', 'folds'})}"
          f"{', train ' + json.dumps(oof.train) if oof.scheme == 'kfold' else ''}): "
          f"{len(frame)} boxes, {time.perf_counter() - t:.0f} s ({'cached' if info['cached'] else 'computed'})")
    labels, crowd, preds = labels_of(ds), labels_of(ds, crowd=True), BoxTable.from_frame(frame)
    bench_speed(*tiled_copies(labels, preds, images), "the COCO dev labels and predictions, repeated")
    sizes = {int(r.image_id): (int(r.width), int(r.height)) for r in ds.images.itertuples()}
    val = {int(r.image_id) for r in ds.images.itertuples() if "val2017" in r.extra}
    pd.set_option("display.width", 120)
    for name, subset in (("all 366 dev images", None), ("the 137 val2017 images (never seen by the COCO model)", val)):
        test = self_test(labels, preds, crowd, sizes, len(ds.class_names), seeds, images=subset, first_seed=first_seed)
        table = summarize(test.table)[["type", "injected", "recall", "recall_sd", "recall_min", "precision",
                                       "precision_min"]]
        print(f"\nself-test on {name}: seeds {first_seed}..{first_seed + seeds - 1}, 5 % of boxes per type "
              "(merged: every queue as one, ranked by the other seeds' hit rates; k = 2 x all injected)")
        print(table.round(3).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=10, help="seeds 0-1 were used to choose the settings")
    ap.add_argument("--scheme", default="pretrained", choices=["pretrained", "kfold"])
    ap.add_argument("--flip", action="store_true", help="also predict the mirrored images (OOFParams.flip)")
    ap.add_argument("--img-size", type=int, default=416, help="input size of the pretrained scheme")
    ap.add_argument("--folds", type=int, default=4, help="k of the kfold scheme")
    ap.add_argument("--train", type=json.loads, default={}, help='kfold: model_train params over the default '
                    'recipe, as JSON, e.g. \'{"freeze_backbone": true, "epochs": 2}\'')
    ap.add_argument("--images", type=int, default=5000, help="images for the speed measurement")
    ap.add_argument("--coco-dev", type=Path, default=COCO_DEV, help="the shared COCO dev folder")
    args = ap.parse_args()
    oof = OOFParams(scheme=args.scheme, flip=args.flip, img_size=args.img_size, folds=args.folds,
                    train={**OOFParams().train, **args.train})
    bench_selftest(args.coco_dev, args.seeds, args.first_seed, oof, args.images)


if __name__ == "__main__":
    main()
