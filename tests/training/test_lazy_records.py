"""Training reads a data version lazily: indexing it builds per-image box arrays without decoding anything (and
without a DataFrame per image), and the in-memory cache of resized images stays within its byte budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvpipe.data.schema import DetectionDataset
from cvpipe.training import augment as A
from cvpipe.training.dataset import AugmentConfig, YoloxTrainDataset, image_records


def _reference_records(ds: DetectionDataset, images_dir: Path) -> list[dict]:
    """The former per-image groupby implementation, kept here as the oracle."""
    label_of = {int(r.category_id): int(r.label) for r in ds.categories.itertuples() if int(r.label) >= 0}
    anns = ds.annotations[(ds.annotations["iscrowd"] == 0) & ds.annotations["category_id"].isin(list(label_of))]
    by_image = {k: g for k, g in anns.groupby("image_id")}
    out = []
    for r in ds.images.sort_values("image_id").itertuples():
        g = by_image.get(int(r.image_id))
        if g is not None and len(g):
            xywh = g[["x", "y", "w", "h"]].to_numpy(np.float32)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
            labels = g["category_id"].map(label_of).to_numpy(np.int64)
            keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
            boxes, labels = boxes[keep], labels[keep]
        else:
            boxes, labels = A.empty_boxes()
        out.append({"image_id": int(r.image_id), "path": Path(images_dir) / (r.blob or r.file_name),
                    "boxes": boxes, "labels": labels})
    return out


def _random_dataset(n_images: int, seed: int) -> DetectionDataset:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1, n_images + 1) * 3)  # unordered, not contiguous
    images = [{"image_id": int(i), "file_name": f"{i}.jpg", "width": 100, "height": 80, "blob": f"b{i}.jpg"}
              for i in ids]
    anns = []
    for k in range(n_images * 4):
        anns.append({"ann_id": k + 1, "image_id": int(rng.choice(ids[: n_images * 3 // 4])),  # some without boxes
                     "category_id": int(rng.integers(1, 5)), "x": float(rng.uniform(0, 50)),
                     "y": float(rng.uniform(0, 40)), "w": float(rng.choice([0.0, 5.0, 12.5])),
                     "h": float(rng.uniform(0, 30)), "area": 1.0, "iscrowd": int(rng.random() < 0.1)})
    cats = [{"category_id": c, "name": f"c{c}", "label": c - 1 if c < 4 else -1} for c in range(1, 5)]
    return DetectionDataset.build(images, anns, cats)


def test_vectorised_records_equal_the_per_image_groupby():
    for seed in range(5):
        ds = _random_dataset(60, seed)
        got, want = image_records(ds, Path("/imgs")), _reference_records(ds, Path("/imgs"))
        assert [r["image_id"] for r in got] == [r["image_id"] for r in want]
        for g, w in zip(got, want):
            assert g["path"] == w["path"]
            np.testing.assert_array_equal(g["boxes"], w["boxes"])
            np.testing.assert_array_equal(g["labels"], w["labels"])


def test_resized_image_cache_stays_within_its_budget(synthetic):
    ds_dir, images_dir = synthetic
    ds = DetectionDataset.load(ds_dir).split("train")
    one = 96 * 96 * 3  # at most one resized 96 px image's bytes
    data = YoloxTrainDataset(ds, images_dir, 96, AugmentConfig(), epochs=2, no_aug_epochs=1, cache_bytes=one)
    for i in range(len(data)):
        data[(i, 1)]
    assert len(data) > 1 and len(data.cache or {}) == 1 and data.cached_bytes <= one
    unbounded = YoloxTrainDataset(ds, images_dir, 96, AugmentConfig(), epochs=2, no_aug_epochs=1)
    for i in range(len(unbounded)):
        unbounded[(i, 1)]
    assert len(unbounded.cache or {}) == len(unbounded)
