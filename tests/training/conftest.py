from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvpipe.data.schema import DetectionDataset

COLORS = [(0, 0, 255), (0, 255, 0)]  # class 0 red, class 1 green (BGR)


def make_synthetic(root: Path, n_train: int = 4, n_val: int = 2, size: int = 128, seed: int = 0) -> tuple[Path, Path]:
    """A tiny dataset of coloured rectangles on grey: (dataset dir, images dir). Category ids 11 / 22 (not the
    labels, so id mapping is exercised); one crowd box per image that training must ignore."""
    rng = np.random.default_rng(seed)
    images_dir, ds_dir = root / "images", root / "dataset"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_train + n_val):
        h, w = size, size + 32 * (i % 2)
        img = np.full((h, w, 3), 90, np.uint8)
        for k in range(2):
            bw, bh = rng.integers(size // 5, size // 2, 2)
            x, y = rng.integers(0, w - bw), rng.integers(0, h - bh)
            cls = (i + k) % 2
            cv2.rectangle(img, (int(x), int(y)), (int(x + bw - 1), int(y + bh - 1)), COLORS[cls], -1)
            anns.append(dict(ann_id=len(anns) + 1, image_id=i + 1, category_id=(11, 22)[cls], x=float(x), y=float(y),
                             w=float(bw), h=float(bh), area=float(bw * bh), iscrowd=0))
        anns.append(dict(ann_id=len(anns) + 1, image_id=i + 1, category_id=11, x=0.0, y=0.0, w=5.0, h=5.0, area=25.0,
                         iscrowd=1))
        data = cv2.imencode(".png", img)[1].tobytes()
        blob = hashlib.sha256(data).hexdigest() + ".png"
        (images_dir / blob).write_bytes(data)
        images.append(dict(image_id=i + 1, file_name=f"img{i}.png", width=w, height=h, blob=blob,
                           split="train" if i < n_train else "val"))
    cats = [dict(category_id=11, name="red", label=0), dict(category_id=22, name="green", label=1)]
    DetectionDataset.build(images, anns, cats).save(ds_dir)
    return ds_dir, images_dir


@pytest.fixture
def synthetic(tmp_path):
    return make_synthetic(tmp_path / "data")
