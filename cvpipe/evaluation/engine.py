"""The one evaluation loop: a batch predictor over a COCO split -> COCO results -> COCO metrics.

Training validation (a torch model) and model_eval (the packed ONNX model) both call `evaluate`; only the
`predict_batch` function differs. Images are read through cvpipe.vision, so both see the service's pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvpipe.progress import track
from cvpipe.vision import ClassMap, Detections, detections_to_coco, read_image

from .coco import CocoEvaluation, coco_evaluate

PredictBatch = Callable[[Sequence[np.ndarray]], "list[Detections]"]


@dataclass
class Predictions:
    results: list[dict]  # COCO results JSON rows
    model_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per image: seconds in predict_batch
    decode_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per image: seconds reading the file


def predict_split(predict_batch: PredictBatch, gt: dict, images_dir: Path, classes: ClassMap,
                  batch_size: int = 1, desc: str = "predicting", label_map: dict[int, int] | None = None
                  ) -> Predictions:
    """Run `predict_batch` over the images of a COCO dict (file names inside `images_dir`).

    `label_map` (model label -> `classes` label) keeps only the classes a dataset has, e.g. to score the
    80-class COCO model on 6 of them; without it every label is kept.
    """
    images = sorted(gt["images"], key=lambda i: i["id"])
    results, model_s, decode_s = [], [], []
    for start in track(range(0, len(images), batch_size), desc):
        chunk = images[start:start + batch_size]
        t0 = time.perf_counter()
        pixels = [read_image(_image_path(images_dir, info)) for info in chunk]
        t1 = time.perf_counter()
        dets = predict_batch(pixels)
        t2 = time.perf_counter()
        decode_s += [(t1 - t0) / len(chunk)] * len(chunk)
        model_s += [(t2 - t1) / len(chunk)] * len(chunk)
        for info, det in zip(chunk, dets):
            results += detections_to_coco(info["id"], _relabel(det, label_map), classes)
    return Predictions(results, np.asarray(model_s), np.asarray(decode_s))


def evaluate(predict_batch: PredictBatch, gt: dict, images_dir: Path, classes: ClassMap, batch_size: int = 1,
             desc: str = "evaluating", label_map: dict[int, int] | None = None
             ) -> tuple[CocoEvaluation, Predictions]:
    """predict_split, then COCO metrics against `gt`."""
    preds = predict_split(predict_batch, gt, images_dir, classes, batch_size, desc, label_map)
    return coco_evaluate(gt, preds.results), preds


def _image_path(images_dir: Path, info: dict) -> Path:
    path = Path(images_dir) / info["file_name"]
    if not path.is_file():
        raise FileNotFoundError(f"image {info['id']} ({info['file_name']}) is missing from the images entity")
    return path


def _relabel(det: Detections, label_map: dict[int, int] | None) -> Detections:
    if label_map is None:
        return det
    keep = np.array([int(label) in label_map for label in det.labels], dtype=bool)
    labels = np.array([label_map[int(label)] for label in det.labels[keep]], dtype=np.int64)
    return Detections(det.boxes[keep], det.scores[keep], labels, det.image_size)
