"""YOLOX output decoding and final detections, numpy (the service's and the evaluator's path; the torch head
and the exported ONNX graph compute the same formulas and are tested equal to these).

Raw head output per anchor point: (dx, dy, log w, log h, objectness, class scores), scores after sigmoid.
Decoded: centre = (d + grid cell) * stride, size = exp(log size) * stride, in network-input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import clip_xyxy, cxcywh_to_xyxy

STRIDES = (8, 16, 32)


def make_grid(size: tuple[int, int], strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point grid (N x 2, cell x/y) and per-point stride (N x 1) for an input size (h, w)."""
    grids, expanded = [], []
    for s in strides:
        gh, gw = size[0] // s, size[1] // s
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        expanded.append(np.full((gh * gw, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def decode_raw(raw: np.ndarray, size: tuple[int, int], strides=STRIDES) -> np.ndarray:
    """Raw head output [..., N, 5+C] -> decoded [..., N, 5+C] with (cx, cy, w, h) in input pixels."""
    grid, stride = make_grid(size, strides)
    out = raw.astype(np.float32, copy=True)
    out[..., :2] = (out[..., :2] + grid) * stride
    out[..., 2:4] = np.exp(out[..., 2:4]) * stride
    return out


@dataclass
class Detections:
    """Final detections of one image: boxes xyxy in original-image pixels, scores, class labels."""

    boxes: np.ndarray  # K x 4 float32
    scores: np.ndarray  # K float32
    labels: np.ndarray  # K int64 (contiguous training label; ClassMap turns it into a category)
    image_size: tuple[int, int] | None = None  # (h, w) of the original image, when known

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, image_size: tuple[int, int] | None = None) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), image_size)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS over xyxy boxes; returns kept indices in descending score order."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_thr]
    return np.asarray(keep, dtype=np.int64)


def postprocess(decoded: np.ndarray, scale: float, score_thr: float = 0.25, nms_thr: float = 0.45,
                max_det: int = 300, image_size: tuple[int, int] | None = None) -> Detections:
    """Decoded predictions of one image [N, 5+C] -> final detections in original-image pixels.

    score = obj * best class prob; per-class NMS (class offset trick); boxes divided by the letterbox
    scale and clipped to `image_size` (h, w) when given.
    """
    obj, cls_prob = decoded[:, 4], decoded[:, 5:]
    labels = cls_prob.argmax(1)
    scores = obj * cls_prob[np.arange(len(labels)), labels]
    m = scores >= score_thr
    if not m.any():
        return Detections.empty(image_size)
    boxes, scores, labels = cxcywh_to_xyxy(decoded[m, :4]), scores[m], labels[m]
    offset = labels[:, None].astype(np.float32) * (boxes.max() + 1.0)
    keep = nms(boxes + offset, scores, nms_thr)[:max_det]
    boxes = boxes[keep] / scale
    if image_size is not None:
        boxes = clip_xyxy(boxes, image_size[1], image_size[0])
    return Detections(boxes.astype(np.float32), scores[keep].astype(np.float32), labels[keep].astype(np.int64),
                      image_size)
