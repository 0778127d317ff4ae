"""One training job from dataset directories to the model_train outputs (used by the step and by torchrun)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvpipe.data.schema import DetectionDataset

from .model_init import build_model
from .params import TrainParams
from .process_group import DistInfo
from .trainer import Trainer, TrainOutputs, seed_everything

log = logging.getLogger(__name__)


def pick_test_image(ds: DetectionDataset) -> tuple[str, Any] | None:
    """(split, image row) of one image with objects: the val image with the most non-crowd boxes (lowest image_id
    on ties); test then train split when val has none."""
    anns = ds.annotations[ds.annotations["iscrowd"] == 0]
    counts = anns.groupby("image_id").size()
    for split in ("val", "test", "train"):
        imgs = ds.images[(ds.images["split"] == split) & ds.images["image_id"].isin(counts.index)]
        if len(imgs):
            order = imgs.assign(n=imgs["image_id"].map(counts)).sort_values(["n", "image_id"], ascending=[False, True])
            return split, next(order.itertuples())
    return None


def write_test_image(ds: DetectionDataset, images_dir: Path, out: Path) -> dict | None:
    """test_image/: image.<ext> (the file's bytes), ground_truth.json and meta.json of one chosen image."""
    out.mkdir(parents=True, exist_ok=True)
    picked = pick_test_image(ds)
    if picked is None:
        log.warning("no image with objects in the dataset: test_image left empty")
        return None
    split, row = picked
    src = Path(images_dir) / (row.blob or row.file_name)
    if not src.is_file():
        raise FileNotFoundError(f"image {row.image_id} ({src.name}) is missing from the images entity")
    ext = src.suffix.lower() or ".jpg"
    shutil.copyfile(src, out / f"image{ext}")
    cats = {int(r.category_id): r for r in ds.categories.itertuples()}
    boxes = []
    for a in ds.annotations[ds.annotations["image_id"] == row.image_id].sort_values("ann_id").itertuples():
        c = cats.get(int(a.category_id))
        boxes.append({"bbox_xywh": [a.x, a.y, a.w, a.h], "bbox_xyxy": [a.x, a.y, a.x + a.w, a.y + a.h],
                      "category_id": int(a.category_id), "category_name": None if c is None else c.name,
                      "label": None if c is None or c.label < 0 else int(c.label), "iscrowd": int(a.iscrowd)})
    gt = {"image_id": int(row.image_id), "file": f"image{ext}", "width": int(row.width), "height": int(row.height),
          "boxes": boxes}
    meta = {"split": split, "image_id": int(row.image_id), "blob": row.blob, "original_file_name": row.file_name,
            "source": row.source, "num_objects": sum(1 for b in boxes if not b["iscrowd"]),
            "chosen_by": f"the {split} image with the most non-crowd objects (lowest image_id on ties)"}
    (out / "ground_truth.json").write_text(json.dumps(gt, indent=2))
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def calibration_batches(train: DetectionDataset, images_dir: Path, img_size: int, images: int = 32,
                        batch_size: int = 8):
    """Letterboxed training images (the lowest image_ids), in batches, to re-estimate BatchNorm statistics."""
    import torch

    from .dataset import YoloxTrainDataset

    data = YoloxTrainDataset(train, images_dir, img_size, None, 1, 1, cache=False)
    picks = list(range(min(images, len(data))))
    for start in range(0, len(picks), batch_size):
        yield torch.stack([data[i][0] for i in picks[start:start + batch_size]])


def training_splits(ds: DetectionDataset, params: TrainParams) -> tuple[DetectionDataset, DetectionDataset]:
    """(train, val) of a prepared dataset, with max_train_images applied; clear errors when unusable."""
    if not ds.class_names:
        raise ValueError("the dataset has no labelled categories (run data_prep first: it assigns training labels)")
    train, val = ds.split("train"), ds.split("val")
    if len(train.images) == 0:
        splits = sorted(set(ds.images["split"]))
        raise ValueError(f"the dataset has no 'train' images (splits present: {splits})")
    if params.max_train_images is not None and len(train.images) > params.max_train_images:
        keep = train.images.sort_values("image_id").head(params.max_train_images)
        log.info("max_train_images: training on %d of %d train images", len(keep), len(train.images))
        train = DetectionDataset.build(keep, train.annotations[train.annotations["image_id"].isin(keep["image_id"])],
                                       train.categories)
    if len(val.images) == 0:
        log.warning("no 'val' images: training without validation; best.pt = last.pt")
    return train, val


def run_training(params: TrainParams, dataset_dir: Path | DetectionDataset, images_dir: Path, outputs: dict[str, Path],
                 dist: DistInfo | None = None, stop_after_epoch: int | None = None,
                 on_saved: Callable[[], None] | None = None) -> dict:
    """Train on the dataset's train split (validating on val) and fill outputs checkpoints / curves / test_image.

    Returns the summary: best / start AP, epochs, images, seconds, the pretrained source and the hyper-parameters.
    """
    dist = dist or DistInfo()
    ds = dataset_dir if isinstance(dataset_dir, DetectionDataset) else DetectionDataset.load(dataset_dir)
    train, val = training_splits(ds, params)
    class_names, label_to_cat = ds.class_names, ds.label_to_category_id()
    seed_everything(params.seed)
    model, init_info = build_model(params.scale, len(class_names), params.pretrained, params.pretrained_required,
                                   class_names, calibration_batches(train, images_dir, params.img_size),
                                   params.keep_fused)
    meta = {"class_names": class_names, "category_ids": [label_to_cat[i] for i in range(len(class_names))],
            "pretrained": init_info, "train_params": params.model_dump(mode="json")}
    trainer = Trainer(params, model, train, val, images_dir,
                      TrainOutputs(outputs["checkpoints"], outputs["curves"]), meta, dist)
    trainer.on_saved = on_saved
    if dist.is_main:
        log.info("hyper-parameters:\n%s", format_table(trainer.hyperparameters))
    result = trainer.fit(stop_after_epoch=stop_after_epoch)
    summary = {**result.summary(), "pretrained": _pretrained_summary(init_info),
               "hyperparameters": trainer.hyperparameters, "device": str(trainer.device),
               "world_size": dist.world_size, "rank_weight_spread": dist.weight_spread(model)}
    if dist.is_main and "test_image" in outputs:
        picked = write_test_image(ds, images_dir, outputs["test_image"])
        summary["test_image_id"] = None if picked is None else picked["image_id"]
    return summary


def _pretrained_summary(info: dict) -> dict:
    keys = ("source", "path", "sha256", "loaded", "layout", "fused", "class_rows", "bn_calibration_images", "skipped")
    return {k: info[k] for k in keys if k in info}


def format_table(rows: dict) -> str:
    """`key  value` lines, aligned (the printed hyper-parameter table)."""
    width = max(map(len, rows), default=0)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows.items())
