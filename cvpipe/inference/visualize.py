"""Draw detections on an image (OpenCV only): used by `cvpipe predict --save-vis` and reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, distinct BGR color per class index (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    bgr = cv2.cvtColor(np.array([[[hue, 200, 255]]], dtype=np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_detections(image_bgr: np.ndarray, boxes, names: Sequence[str], scores=None,
                    color: tuple[int, int, int] | Sequence[tuple[int, int, int]] | None = None,
                    thickness: int | None = None) -> np.ndarray:
    """A copy of the image with boxes (xyxy, original px) and "name score" labels.

    names: one label per box; color: one BGR color for all boxes, one per box, or None (per name).
    """
    out = image_bgr.copy()
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    h, w = out.shape[:2]
    t = thickness or max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 1000)
    name_index: dict[str, int] = {}
    c: tuple[int, ...]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        name = str(names[i])
        if color is None:
            c = class_color(name_index.setdefault(name, len(name_index)))
        elif isinstance(color[0], (tuple, list)):
            c = tuple(int(v) for v in cast(Sequence[tuple[int, int, int]], color)[i])
        else:
            c = tuple(int(v) for v in cast(tuple[int, int, int], color))
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, c, t, cv2.LINE_AA)
        label = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else p1[1] + th + 2
        cv2.rectangle(out, (p1[0], ty - th - base + 1), (p1[0] + tw + 2, ty + base - 1), c, -1)
        cv2.putText(out, label, (p1[0] + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
