"""Out-of-fold predictions: every image is scored by a model that never trained on it.

Two schemes:
- `kfold`: the images are dealt into k folds (seeded); for each fold a model is fine-tuned from the pretrained
  start on the other folds with cvpipe's own trainer (cvpipe.training) and predicts the held-out fold.
- `pretrained`: the pretrained COCO model as it is, mapped to the dataset's classes by name. It never saw the
  user's images (it saw COCO train2017), needs no training, and is the cheap choice for COCO-class data;
  docs/labels.md compares both on the self-test.

Predictions are kept at a low score threshold (the scorer wants the weak evidence too) and cached under
CVPIPE_CACHE, keyed by the digest of the data (labels + image contents) and the scheme's settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cvpipe.cache import cache_path
from cvpipe.data.schema import DetectionDataset
from cvpipe.progress import track
from cvpipe.vision import Detections, read_image

from .boxes import BoxTable
from .tiles import PredictBatch, flipped, tiled

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the cached predictions' meaning changes


class OOFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: Literal["kfold", "pretrained"] = Field("kfold", description="kfold: k fine-tunes, each predicting "
                                                   "the fold it did not see; pretrained: the COCO model as is "
                                                   "(COCO-class data only)")
    folds: int = Field(4, ge=2, description="k of the k-fold scheme")
    seed: int = 0
    score_thr: float = Field(0.005, gt=0, lt=1, description="keep predictions from this score up")
    max_det: int = Field(100, ge=1)
    tiles: bool = Field(True, description="also predict 2 x 2 overlapping crops of each image (5 passes): the "
                        "scorer can only judge the labels the model sees, and crops let it see small objects")
    flip: bool = Field(False, description="also predict every image (and crop) mirrored and score each box by "
                       "how well both views agree (measured: no gain on COCO dev, docs/labels.md)")
    img_size: int = Field(416, ge=128, le=1280, multiple_of=32, description="input size of the pretrained "
                          "scheme (the shipped ONNX is fixed at 416; another size runs its weights in PyTorch)")
    batch_size: int = Field(8, ge=1)
    train: dict[str, Any] = Field(default_factory=lambda: {
        "scale": "nano", "pretrained": "nano-onnx", "img_size": 416, "epochs": 3, "no_aug_epochs": 3,
        "lr_per_img": 0.000078125, "batch_size": 8, "workers": 0, "freeze_backbone": True},
        description="model_train params of each fold's fine-tune (configs/coco.yaml's recipe by default: the head "
        "alone trains; all layers lost 0.03 self-test recall on COCO dev, docs/labels.md)")
    cache: bool = Field(True, description="reuse predictions cached for the same data and settings")


def data_digest(ds: DetectionDataset) -> str:
    """sha256 of what the predictions depend on: every labelled box, the classes and each image's content."""
    h = hashlib.sha256()
    imgs = ds.images.sort_values("image_id")[["image_id", "digest", "blob", "split", "width", "height"]]
    anns = ds.annotations.sort_values("ann_id")[["ann_id", "image_id", "category_id", "x", "y", "w", "h",
                                                 "iscrowd"]]
    cats = ds.categories.sort_values("category_id")[["category_id", "name", "label"]]
    for frame in (imgs, anns, cats):
        h.update(frame.to_csv(index=False).encode())
    return h.hexdigest()


def cache_dir() -> Path:
    return cache_path("oof")


def cache_key(ds: DetectionDataset, params: OOFParams) -> str:
    settings = params.model_dump(mode="json", exclude={"cache", "batch_size"})
    payload = json.dumps({"data": data_digest(ds), "oof": settings, "v": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def fold_of_images(image_ids: Sequence[int], folds: int, seed: int) -> dict[int, int]:
    """A seeded, balanced deal of the images into `folds` folds."""
    ids = np.sort(np.asarray(image_ids, np.int64))
    order = np.random.default_rng(seed).permutation(len(ids))
    return {int(ids[i]): int(rank % folds) for rank, i in enumerate(order)}


def out_of_fold_predictions(ds: DetectionDataset, images_dir: Path, params: OOFParams) -> tuple[pd.DataFrame, dict]:
    """(predictions frame: image_id, label, x1..y2, score, fold; info) for every image of `ds`."""
    key = cache_key(ds, params)
    cached = cache_dir() / f"{key}.parquet"
    if params.cache and cached.is_file():
        log.info("out-of-fold predictions: reusing the cache %s (same data and settings)", cached)
        return pd.read_parquet(cached), {**json.loads(cached.with_suffix(".json").read_text()), "cached": True}
    if params.scheme == "pretrained":
        frame, info = _pretrained_predictions(ds, images_dir, params)
    else:
        frame, info = _kfold_predictions(ds, images_dir, params)
    info = {**info, "scheme": params.scheme, "key": key, "images": len(ds.images),
            "predictions": len(frame)}
    if params.cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        frame.to_parquet(tmp, index=False)
        cached.with_suffix(".json").write_text(json.dumps(info))
        tmp.replace(cached)  # the parquet last: a cache entry is whole or absent
    return frame, {**info, "cached": False}


def predict_images(predict_batch: Callable[[list[np.ndarray]], list[Detections]], ds: DetectionDataset,
                   images_dir: Path, batch_size: int, desc: str, label_map: dict[int, int] | None = None
                   ) -> pd.DataFrame:
    """Predictions of `predict_batch` over every image of `ds`, as a frame (labels mapped by `label_map`)."""
    rows: list[pd.DataFrame] = []
    images = ds.images.sort_values("image_id")
    for start in track(range(0, len(images), batch_size), desc):
        chunk = images.iloc[start:start + batch_size]
        pixels = [read_image(Path(images_dir) / (r.blob or r.file_name)) for r in chunk.itertuples()]
        for image_id, det in zip(chunk["image_id"], predict_batch(pixels)):
            labels = det.labels.astype(np.int64)
            keep = np.ones(len(labels), bool) if label_map is None else np.isin(labels, list(label_map))
            mapped = labels[keep] if label_map is None else np.array([label_map[int(x)] for x in labels[keep]],
                                                                       np.int64)
            boxes = det.boxes[keep].astype(np.float64)
            rows.append(BoxTable.build(np.full(len(mapped), int(image_id)), mapped, boxes,
                                       det.scores[keep]).to_frame().drop(columns="ann_id"))
    frame = pd.concat(rows, ignore_index=True) if rows else BoxTable.build([], [], np.zeros((0, 4))).to_frame()
    return frame.drop(columns="ann_id", errors="ignore")


def _pretrained_predictions(ds: DetectionDataset, images_dir: Path, params: OOFParams) -> tuple[pd.DataFrame, dict]:
    from cvpipe.evaluation.baseline import label_map_for, onnx_eval_model
    from cvpipe.models.pretrained_files import find_nano_onnx

    onnx = find_nano_onnx()
    model = onnx_eval_model(onnx, (416, 416), params.score_thr)
    mapping = label_map_for(model, ds.class_map())
    predict = model.predict_batch if params.img_size == 416 else _torch_nano(params)
    frame = predict_images(_views(predict, params), ds, images_dir, params.batch_size, "predicting (pretrained)",
                           mapping)
    frame["fold"] = -1
    return _top_per_image(frame, params.max_det), {"model": str(onnx), "img_size": params.img_size}


def _torch_nano(params: OOFParams) -> PredictBatch:
    """The shipped nano's weights (BN-folded, as exported) in PyTorch at `params.img_size`."""
    from cvpipe.inference.torch_predictor import TorchPredictor
    from cvpipe.training.model_init import build_model

    net, _ = build_model("nano", 80, "nano-onnx", keep_fused=True)
    return TorchPredictor(net.eval(), (params.img_size, params.img_size), params.score_thr,
                          max_det=params.max_det, device="cpu")


def _views(predict: PredictBatch, params: OOFParams) -> PredictBatch:
    """The predictor with the test-time views the settings ask for: mirrored, then crops of each."""
    if params.flip:
        predict = flipped(predict, max_det=params.max_det)
    return tiled(predict, max_det=params.max_det) if params.tiles else predict


def _kfold_predictions(ds: DetectionDataset, images_dir: Path, params: OOFParams) -> tuple[pd.DataFrame, dict]:
    folds = fold_of_images(ds.images["image_id"], params.folds, params.seed)
    frames, fits = [], []
    for k in range(params.folds):
        held = [i for i, f in folds.items() if f == k]
        frame, fit = predict_fold(ds, images_dir, params, held, k)
        frame["fold"] = k
        frames.append(frame)
        fits.append(fit)
    return _top_per_image(pd.concat(frames, ignore_index=True), params.max_det), {"folds": fits}


def predict_fold(ds: DetectionDataset, images_dir: Path, params: OOFParams, held: list[int], k: int
                 ) -> tuple[pd.DataFrame, dict]:
    """Fine-tune from the pretrained start on every image not in `held`, then predict the held images."""
    from cvpipe.inference.torch_predictor import TorchPredictor
    from cvpipe.training.model_init import build_model
    from cvpipe.training.params import TrainParams
    from cvpipe.training.run import calibration_batches
    from cvpipe.training.trainer import Trainer, TrainOutputs, seed_everything

    tp = TrainParams(**{**params.train, "seed": params.seed + k})
    split = ds.images["image_id"].isin(held).map({True: "held", False: "train"})
    fold_ds = DetectionDataset.build(ds.images.assign(split=split), ds.annotations, ds.categories)
    train, held_ds = fold_ds.split("train"), fold_ds.split("held")
    seed_everything(tp.seed)
    model, _ = build_model(tp.scale, len(ds.class_names), tp.pretrained, tp.pretrained_required, ds.class_names,
                           calibration_batches(train, images_dir, tp.img_size), tp.keep_fused)
    with tempfile.TemporaryDirectory(prefix="cvpipe-oof-") as tmp:
        outputs = TrainOutputs(Path(tmp) / "checkpoints", Path(tmp) / "curves")
        log.info("fold %d/%d: fine-tuning on %d images, predicting %d", k + 1, params.folds, len(train.images),
                 len(held_ds.images))
        trainer = Trainer(tp, model, train, None, images_dir, outputs, {"class_names": ds.class_names})
        result = trainer.fit()
        net = trainer.eval_model.eval()
        predictor = TorchPredictor(net, (tp.img_size, tp.img_size), params.score_thr, device=trainer.device)
        predict = _views(predictor, params)
        frame = predict_images(predict, held_ds, images_dir, params.batch_size, f"predicting fold {k + 1}")
    return frame, {"fold": k, "train_images": len(train.images), "held_images": len(held_ds.images),
                   "seconds": round(result.seconds, 1)}


def _top_per_image(frame: pd.DataFrame, max_det: int) -> pd.DataFrame:
    frame = frame.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    return frame.groupby("image_id", sort=False).head(max_det).reset_index(drop=True)


def predictions_table(frame: pd.DataFrame) -> BoxTable:
    return BoxTable.from_frame(frame)

