"""Errors of every type injected into a copy of the labels, with the truth kept, for the self-test.

A share (`rate`, 5 % by default) of the boxes gets each kind of error, on disjoint boxes: dropped (missing),
class flipped to another class (wrong_class), shifted and rescaled so that the new box overlaps the old one
only partly (bad_location), duplicated with a small jitter (duplicate); and as many boxes are spawned where
nothing was labelled, with a random class and the size of a real box of the data (spurious).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .boxes import BoxTable, pair_iou


@dataclass(frozen=True)
class Injected:
    labels: BoxTable  # the noisy copy
    truth: pd.DataFrame  # type, image_id, ann_id (the noisy label; -1 for a dropped box), x1..y2 of the truth


def inject_errors(labels: BoxTable, image_sizes: dict[int, tuple[int, int]], num_classes: int, rate: float = 0.05,
                  seed: int = 0) -> Injected:
    """The noisy copy of `labels` and what was done; image_sizes: image_id -> (width, height)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    per_type = max(1, round(rate * n))
    picked = rng.permutation(n)
    drop, flip, move, dup = (picked[i * per_type:(i + 1) * per_type] for i in range(4))
    label = labels.label.copy()
    label[flip] = (label[flip] + rng.integers(1, max(num_classes, 2), len(flip))) % max(num_classes, 2)
    xyxy = labels.xyxy.copy()
    sizes = np.array([image_sizes[int(i)] for i in labels.image_id], np.float64).reshape(-1, 2)
    xyxy[move] = _moved(labels.xyxy[move], sizes[move], rng)
    next_id = int(labels.ann_id.max(initial=0)) + 1
    dup_ids = np.arange(next_id, next_id + len(dup))
    dup_boxes = _jittered(labels.xyxy[dup], sizes[dup], rng)
    spawn_img, spawn_boxes = _spawned(labels, image_sizes, per_type, rng)
    spawn_ids = np.arange(next_id + len(dup), next_id + len(dup) + per_type)
    spawn_label = rng.integers(0, max(num_classes, 1), per_type)
    keep = np.setdiff1d(np.arange(n), drop)
    noisy = BoxTable.build(
        np.concatenate([labels.image_id[keep], labels.image_id[dup], spawn_img]),
        np.concatenate([label[keep], labels.label[dup], spawn_label]),
        np.concatenate([xyxy[keep], dup_boxes, spawn_boxes]), None,
        np.concatenate([labels.ann_id[keep], dup_ids, spawn_ids]))
    truth = pd.concat([
        _truth("missing", labels.image_id[drop], np.full(len(drop), -1), labels.xyxy[drop]),
        _truth("wrong_class", labels.image_id[flip], labels.ann_id[flip], labels.xyxy[flip]),
        _truth("bad_location", labels.image_id[move], labels.ann_id[move], labels.xyxy[move]),
        _truth("duplicate", labels.image_id[dup], dup_ids, labels.xyxy[dup]),
        _truth("spurious", spawn_img, spawn_ids, spawn_boxes)], ignore_index=True)
    return Injected(noisy, truth)


def _truth(kind: str, image_id, ann_id, xyxy) -> pd.DataFrame:
    x1, y1, x2, y2 = np.asarray(xyxy, np.float64).reshape(-1, 4).T
    return pd.DataFrame({"type": kind, "image_id": np.asarray(image_id, np.int64),
                         "ann_id": np.asarray(ann_id, np.int64), "x1": x1, "y1": y1, "x2": x2, "y2": y2})


def _clip(xyxy: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out = xyxy.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, sizes[:, :1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, sizes[:, 1:])
    return out


def _moved(xyxy: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, tries: int = 32) -> np.ndarray:
    """Shift (15-45 % of the size) and rescale (x0.6-1.6 per side) each box until its IoU with the original is in
    [0.2, 0.6]: a box a labeller would redraw, still over the object."""
    n = len(xyxy)
    out = xyxy.copy()
    done = np.zeros(n, bool)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    for _ in range(tries):
        shift = rng.uniform(0.15, 0.45, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2)) * wh
        scale = np.exp(rng.uniform(np.log(0.6), np.log(1.6), (n, 2)))
        centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2 + shift
        cand = _clip(np.concatenate([centre - wh * scale / 2, centre + wh * scale / 2], 1), sizes)
        iou = pair_iou(cand, xyxy)
        ok = ~done & (iou >= 0.2) & (iou <= 0.6)
        out[ok], done[ok] = cand[ok], True
        if done.all():
            break
    return out


def _jittered(xyxy: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of each box with its corners moved by up to 5 % of its size (IoU with the original >= ~0.8)."""
    wh = np.repeat(xyxy[:, 2:] - xyxy[:, :2], 2, axis=0).reshape(-1, 4)
    return _clip(xyxy + rng.uniform(-0.05, 0.05, xyxy.shape) * wh, sizes)


def _spawned(labels: BoxTable, image_sizes: dict[int, tuple[int, int]], count: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """`count` boxes at random places of random images, each the size of a random real box, overlapping no
    label of its image by more than IoU 0.1 (where a try finds such a place)."""
    ids = np.array(sorted(image_sizes), np.int64)
    img = rng.choice(ids, count)
    sizes = np.array([image_sizes[int(i)] for i in img], np.float64).reshape(-1, 2)
    real_wh = labels.xyxy[:, 2:] - labels.xyxy[:, :2] if len(labels) else np.full((1, 2), 32.0)
    boxes = np.zeros((count, 4))
    placed = np.zeros(count, bool)
    for _ in range(16):
        wh = np.minimum(real_wh[rng.integers(0, len(real_wh), count)], sizes * 0.9)
        top_left = rng.uniform(0, 1, (count, 2)) * (sizes - wh)
        cand = np.concatenate([top_left, top_left + wh], 1)
        free = _overlap_free(cand, img, labels)
        take = ~placed & free
        boxes[take], placed[take] = cand[take], True
        boxes[~placed] = cand[~placed]
        if placed.all():
            break
    return img, boxes


def _overlap_free(cand: np.ndarray, img: np.ndarray, labels: BoxTable, most: float = 0.1) -> np.ndarray:
    from .boxes import image_pairs, segment_max

    table = BoxTable(img, np.zeros(len(img), np.int64), cand, np.ones(len(img)), np.arange(len(img)))
    order = np.argsort(img, kind="stable")
    sorted_t = BoxTable(img[order], table.label, cand[order], table.score, table.ann_id)
    ia, ib = image_pairs(sorted_t, labels)
    worst = segment_max(pair_iou(sorted_t.xyxy[ia], labels.xyxy[ib]), ia, len(img))
    out = np.empty(len(img), bool)
    out[order] = worst <= most
    return out
