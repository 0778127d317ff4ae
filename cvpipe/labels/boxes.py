"""Boxes of many images as flat numpy columns, and the vectorised joins the scorer is built from.

Both the labels and the model's predictions are `BoxTable`s sorted by image: one row per box, no Python loop
per image anywhere below. `image_pairs` lists every (a, b) row pair that shares an image, which turns
"for each image, for each label, for each prediction" into one array operation over all pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cvpipe.data.schema import DetectionDataset


@dataclass(frozen=True)
class BoxTable:
    """Boxes sorted by image_id. `ann_id` is the label's id (-1 for predictions), `score` 1.0 for labels."""

    image_id: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N], the training label 0..K-1
    xyxy: np.ndarray  # float64 [N, 4], pixels of the stored image
    score: np.ndarray  # float64 [N]
    ann_id: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def build(cls, image_id, label, xyxy, score=None, ann_id=None) -> BoxTable:
        image_id = np.asarray(image_id, np.int64).reshape(-1)
        n = len(image_id)
        score = np.ones(n) if score is None else np.asarray(score, np.float64).reshape(-1)
        ann_id = np.full(n, -1, np.int64) if ann_id is None else np.asarray(ann_id, np.int64).reshape(-1)
        order = np.argsort(image_id, kind="stable")
        return cls(image_id[order], np.asarray(label, np.int64).reshape(-1)[order],
                   np.asarray(xyxy, np.float64).reshape(-1, 4)[order], score[order], ann_id[order])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> BoxTable:
        """Columns image_id, label, x1, y1, x2, y2, score (and ann_id)."""
        return cls.build(frame["image_id"], frame["label"], frame[["x1", "y1", "x2", "y2"]].to_numpy(),
                         frame["score"], frame.get("ann_id"))

    def to_frame(self) -> pd.DataFrame:
        x1, y1, x2, y2 = self.xyxy.T
        return pd.DataFrame({"image_id": self.image_id, "label": self.label, "x1": x1, "y1": y1, "x2": x2,
                             "y2": y2, "score": self.score, "ann_id": self.ann_id})

    def take(self, rows: np.ndarray) -> BoxTable:
        return BoxTable.build(self.image_id[rows], self.label[rows], self.xyxy[rows], self.score[rows],
                              self.ann_id[rows])


def labels_of(ds: DetectionDataset, crowd: bool = False) -> BoxTable:
    """The dataset's boxes with a training label: the ordinary ones, or (crowd=True) the iscrowd regions."""
    label_of = {int(r.category_id): int(r.label) for r in ds.categories.itertuples() if int(r.label) >= 0}
    anns = ds.annotations[(ds.annotations["iscrowd"] == int(crowd)) & ds.annotations["category_id"].isin(label_of)]
    xywh = anns[["x", "y", "w", "h"]].to_numpy(np.float64)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    return BoxTable.build(anns["image_id"], anns["category_id"].map(label_of), xyxy, None, anns["ann_id"])


def image_pairs(a: BoxTable, b: BoxTable) -> tuple[np.ndarray, np.ndarray]:
    """(ia, ib): every pair of rows of a and b in the same image, grouped by ia (ascending)."""
    lo = np.searchsorted(b.image_id, a.image_id, "left")
    hi = np.searchsorted(b.image_id, a.image_id, "right")
    counts = hi - lo
    ia = np.repeat(np.arange(len(a)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    ib = np.repeat(lo, counts) + (np.arange(len(ia)) - starts)
    return ia, ib


def _pair_intersection(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, area of a, area of b) of row-aligned xyxy boxes (np.maximum: much faster than clip)."""
    w = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0)
    h = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    return w * h, area_a, area_b


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row-aligned xyxy boxes a[i], b[i] (0 where the union is empty)."""
    inter, area_a, area_b = _pair_intersection(a, b)
    union = area_a + area_b - inter
    return inter / np.maximum(union, 1e-12)


def pair_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of a[i] (how much of a lies inside b): a crowd region covers what it holds."""
    inter, area_a, _ = _pair_intersection(a, b)
    return inter / np.maximum(area_a, 1e-12)


def segment_max(values: np.ndarray, groups: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    """Per group 0..n-1, the max of `values` whose group it is (`fill` for groups without any)."""
    out = np.full(n, fill, dtype=np.float64)
    if len(values) == 0:
        return out
    if np.all(groups[1:] >= groups[:-1]):  # grouped (image_pairs' order): one reduceat, no scatter
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        out[groups[starts]] = np.maximum(np.maximum.reduceat(values, starts), fill)
    else:
        np.maximum.at(out, groups, values)  # fill must be <= every value for this to be the plain max
    return out


def segment_argmax(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Per group, the index into `values` of its largest value (-1 for groups without any)."""
    out = np.full(n, -1, dtype=np.int64)
    if len(values) == 0:
        return out
    order = np.lexsort((-values, groups))
    first = np.r_[True, groups[order][1:] != groups[order][:-1]]
    out[groups[order][first]] = order[first]
    return out
