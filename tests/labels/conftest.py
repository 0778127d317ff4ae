"""Shared pieces of the label-check tests: synthetic labels with a model that agrees with them, and a small
prepared data version (real COCO images from the bundled sample) written as data_prep writes one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cvpipe.data.load import copy_or_link
from cvpipe.data.schema import DetectionDataset
from cvpipe.labels.boxes import BoxTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coco_data import REPO, need_data

SAMPLE = REPO / "examples" / "coco_sample"


def grid_labels(images: int = 40, per_image: int = 6, classes: int = 4, seed: int = 0) -> BoxTable:
    """Non-overlapping boxes on a grid of 640 x 480 images, random classes and sizes (20-90 px)."""
    rng = np.random.default_rng(seed)
    rows = []
    for img in range(1, images + 1):
        for k in range(per_image):
            cx, cy = 60 + (k % 3) * 200, 100 + (k // 3) * 250
            w, h = rng.uniform(20, 90, 2)
            rows.append((img, int(rng.integers(0, classes)), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    a = np.array(rows)
    return BoxTable.build(a[:, 0], a[:, 1], a[:, 2:6], None, np.arange(1, len(a) + 1))


def agreeing_model(labels: BoxTable, score: float = 0.9, shift: float = 0.0) -> BoxTable:
    """Predictions that are the labels (moved `shift` px right), at one confident score, plus a weak stray box per
    image."""
    stray = np.tile([[300.0, 20.0, 310.0, 30.0]], (len(np.unique(labels.image_id)), 1))
    return BoxTable.build(np.r_[labels.image_id, np.unique(labels.image_id)],
                          np.r_[labels.label, np.zeros(len(stray), np.int64)],
                          np.concatenate([labels.xyxy + [shift, 0, shift, 0], stray]),
                          np.r_[np.full(len(labels), score), np.full(len(stray), 0.01)])


SIZES = {i: (640, 480) for i in range(1, 41)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, images dir) of the first 12 bundled COCO sample images, split train/val/test as data_prep
    would leave them (labels 0..K-1 for the classes present)."""
    need_data()
    tmp_path = tmp_path_factory.mktemp("prepared")
    coco = json.loads((SAMPLE / "annotations.json").read_text())
    chosen = sorted(coco["images"], key=lambda i: i["id"])[:12]
    ids = {i["id"] for i in chosen}
    anns = [a for a in coco["annotations"] if a["image_id"] in ids]
    used = sorted({a["category_id"] for a in anns})
    cats = [c for c in coco["categories"] if c["id"] in used]
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rows = []
    for n, im in enumerate(chosen):
        blob = f"blob{im['id']}.jpg"
        copy_or_link(SAMPLE / "images" / im["file_name"], images_dir / blob)
        rows.append({"image_id": im["id"], "file_name": im["file_name"], "width": im["width"],
                     "height": im["height"], "digest": f"d{im['id']}", "blob": blob,
                     "split": ("train", "val", "test")[n % 3]})
    ds = DetectionDataset.build(
        rows,
        [{"ann_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "x": a["bbox"][0],
          "y": a["bbox"][1], "w": a["bbox"][2], "h": a["bbox"][3], "area": a["area"], "iscrowd": a["iscrowd"]}
         for a in anns],
        [{"category_id": c["id"], "name": c["name"], "supercategory": c["supercategory"], "label": k}
         for k, c in enumerate(cats)])
    ds.save(tmp_path / "dataset")
    return tmp_path / "dataset", images_dir
