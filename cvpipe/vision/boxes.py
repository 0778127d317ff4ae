"""Box formats and IoU, numpy. xyxy = corners (x1, y1, x2, y2); xywh = COCO (top-left x, y, width, height);
cxcywh = centre and size (YOLOX's head). Pixels are continuous coordinates: a box [0, 0, 10, 10] covers
the first 10 x 10 pixels. Every function takes [..., 4] arrays and keeps the leading shape."""

from __future__ import annotations

import numpy as np


def xywh_to_xyxy(b) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64 if np.asarray(b).dtype == np.float64 else np.float32)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], -1)


def xyxy_to_xywh(b) -> np.ndarray:
    b = np.asarray(b)
    return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], -1)


def cxcywh_to_xyxy(b) -> np.ndarray:
    b = np.asarray(b)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], -1)


def xyxy_to_cxcywh(b) -> np.ndarray:
    b = np.asarray(b)
    return np.concatenate([(b[..., :2] + b[..., 2:4]) / 2, b[..., 2:4] - b[..., :2]], -1)


def clip_xyxy(b, width: float, height: float) -> np.ndarray:
    """A copy with x clipped to [0, width] and y to [0, height]."""
    out = np.array(b, copy=True)
    out[..., [0, 2]] = out[..., [0, 2]].clip(0, width)
    out[..., [1, 3]] = out[..., [1, 3]].clip(0, height)
    return out


def box_area(b) -> np.ndarray:
    """Area of xyxy boxes; inverted boxes count as 0."""
    b = np.asarray(b)
    return (b[..., 2] - b[..., 0]).clip(0) * (b[..., 3] - b[..., 1]).clip(0)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    h = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    return w * h


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, N x M (float64); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
