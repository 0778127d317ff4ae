"""Training augmentations as plain numpy / OpenCV functions (YOLOX's recipe).

Images are HxWx3 uint8 BGR; boxes are float32 [N, 4] xyxy in that image's pixels with int64 labels [N]
beside them. Every random choice comes from the `rng` (a numpy Generator) passed in, so a sample is a pure
function of its seed: the same on every worker count, process count and after a resume.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cvpipe.vision import PAD_VALUE, clip_xyxy, resize_scale


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def resize_to_fit(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale so the image fits in size x size (one factor, aspect kept, the letterbox's resize); boxes with it."""
    r, (nh, nw) = resize_scale(image.shape[:2], (size, size))
    if (nh, nw) != image.shape[:2]:
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return image, (boxes * np.float32(r)).astype(np.float32)


def pad_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Place `image` (at most size x size) top-left on a size x size canvas of the pad value."""
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    h, w = image.shape[:2]
    canvas[:h, :w] = image
    return canvas


def box_candidates(before: np.ndarray, after: np.ndarray, min_size: float = 2.0, min_area_ratio: float = 0.1,
                   max_aspect: float = 20.0) -> np.ndarray:
    """Keep-mask for boxes after a geometric transform: big enough, not mostly cut off, not sliver-thin.

    before: the boxes transformed but not clipped (their area is what the object would cover), after: clipped.
    """
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + 1e-16), h1 / (w1 + 1e-16))
    return (w1 > min_size) & (h1 > min_size) & (w1 * h1 / (w0 * h0 + 1e-16) > min_area_ratio) & (aspect < max_aspect)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x -> width - x."""
    w = image.shape[1]
    out = boxes.copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, hgain: float = 5, sgain: float = 30,
               vgain: float = 30) -> np.ndarray:
    """Shift hue / saturation / value by random offsets up to the gains (OpenCV units: H 0..179, S, V 0..255)."""
    offsets = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain])
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(offsets[0]))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + int(round(offsets[1])), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + int(round(offsets[2])), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def affine_matrix(rng: np.random.Generator, out_size: tuple[int, int], in_size: tuple[int, int],
                  degrees: float, translate: float, scale: tuple[float, float], shear: float) -> np.ndarray:
    """2x3 matrix: rotate + scale about the input centre, shear, then move to the output centre + translation.

    in_size / out_size are (width, height).
    """
    cx, cy = in_size[0] / 2, in_size[1] / 2
    centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(scale[0], scale[1])
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D((0, 0), angle, s)
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    tr = np.eye(3)
    tr[0, 2] = out_size[0] / 2 + rng.uniform(-translate, translate) * out_size[0]
    tr[1, 2] = out_size[1] / 2 + rng.uniform(-translate, translate) * out_size[1]
    return (tr @ sh @ rot @ centre)[:2]


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """xyxy boxes through a 2x3 affine matrix: the axis-aligned hull of the four moved corners."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)  # x1y1, x2y1, x2y2, x1y2
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    moved = moved.reshape(-1, 4, 2)
    return np.concatenate([moved.min(1), moved.max(1)], 1).astype(np.float32)


def random_affine(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  out_size: int, degrees: float = 10.0, translate: float = 0.1,
                  scale: tuple[float, float] = (0.1, 2.0), shear: float = 2.0,
                  min_size: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rotation / scale / shear / translation into an out_size x out_size image (fill = pad value).

    The input is centred on the output before the translation, so a 2s mosaic canvas becomes an s crop around
    its middle. Boxes follow the corners, are clipped to the output and filtered (`box_candidates`).
    """
    h, w = image.shape[:2]
    m = affine_matrix(rng, (out_size, out_size), (w, h), degrees, translate, scale, shear)
    out = cv2.warpAffine(image, m, (out_size, out_size), flags=cv2.INTER_LINEAR,
                         borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    moved = transform_boxes(boxes, m)
    clipped = clip_xyxy(moved, out_size, out_size)
    keep = box_candidates(moved, clipped, min_size)
    return out, clipped[keep], labels[keep]


def mosaic(images: list[np.ndarray], boxes: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator,
           size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images (each at most size x size) around a random centre of a 2size x 2size canvas.

    Image 0 goes top-left of the centre, 1 top-right, 2 bottom-left, 3 bottom-right, each touching the
    centre and cut at the canvas border. Returns the canvas and the boxes moved and clipped into it (boxes
    cut down to nothing are dropped).
    """
    if len(images) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(images)}")
    s2 = 2 * size
    xc = int(rng.uniform(0.5 * size, 1.5 * size))
    yc = int(rng.uniform(0.5 * size, 1.5 * size))
    canvas = np.full((s2, s2, 3), PAD_VALUE, np.uint8)
    all_boxes, all_labels = [], []
    for i, (img, bx, lb) in enumerate(zip(images, boxes, labels)):
        h, w = img.shape[:2]
        # where the image's corner lands on the canvas (may be outside: then the image is cut)
        x0 = xc - w if i in (0, 2) else xc
        y0 = yc - h if i in (0, 1) else yc
        cx1, cy1 = max(x0, 0), max(y0, 0)
        cx2, cy2 = min(x0 + w, s2), min(y0 + h, s2)
        canvas[cy1:cy2, cx1:cx2] = img[cy1 - y0:cy2 - y0, cx1 - x0:cx2 - x0]
        if len(bx):
            moved = bx + np.array([x0, y0, x0, y0], np.float32)
            moved[:, [0, 2]] = moved[:, [0, 2]].clip(cx1, cx2)
            moved[:, [1, 3]] = moved[:, [1, 3]].clip(cy1, cy2)
            keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
            all_boxes.append(moved[keep])
            all_labels.append(lb[keep])
    if not all_boxes:
        no_boxes, no_labels = empty_boxes()
        return canvas, no_boxes, no_labels
    return canvas, np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_labels).astype(np.int64)


def mixup(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, other: np.ndarray, other_boxes: np.ndarray,
          other_labels: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.5),
          min_size: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend `other` (rescaled by a random factor, maybe mirrored, randomly cropped) 50/50 into `image`.

    `image` is the square training canvas; `other` any image with its boxes. The union of both box sets is
    returned; the other's boxes are filtered like any geometric transform's.
    """
    size_h, size_w = image.shape[:2]
    h, w = other.shape[:2]
    r = min(size_h / h, size_w / w) * rng.uniform(*scale)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    resized = cv2.resize(other, (nw, nh), interpolation=cv2.INTER_LINEAR)
    ob = other_boxes.astype(np.float32) * np.float32(r)
    if rng.random() < 0.5:
        resized, ob = hflip(resized, ob)
    ch, cw = max(nh, size_h), max(nw, size_w)
    canvas = np.full((ch, cw, 3), PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = resized
    oy = int(rng.integers(0, ch - size_h + 1))
    ox = int(rng.integers(0, cw - size_w + 1))
    crop = canvas[oy:oy + size_h, ox:ox + size_w]
    moved = ob - np.array([ox, oy, ox, oy], np.float32)
    clipped = clip_xyxy(moved, size_w, size_h)
    keep = box_candidates(moved, clipped, min_size)
    blended = (0.5 * image.astype(np.float32) + 0.5 * crop.astype(np.float32)).astype(np.uint8)
    return (blended, np.concatenate([boxes, clipped[keep]]).astype(np.float32),
            np.concatenate([labels, other_labels[keep]]).astype(np.int64))


def filter_small(boxes: np.ndarray, labels: np.ndarray, width: int, height: int,
                 min_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image and drop boxes narrower or shorter than `min_size` pixels."""
    clipped = clip_xyxy(boxes, width, height)
    keep = ((clipped[:, 2] - clipped[:, 0]) > min_size) & ((clipped[:, 3] - clipped[:, 1]) > min_size)
    return clipped[keep], labels[keep]


def xyxy_to_targets(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, 5] float32 rows (label, cx, cy, w, h) -- the model's target layout."""
    out = np.zeros((len(boxes), 5), np.float32)
    out[:, 0] = labels
    out[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2
    out[:, 2] = (boxes[:, 1] + boxes[:, 3]) / 2
    out[:, 3] = boxes[:, 2] - boxes[:, 0]
    out[:, 4] = boxes[:, 3] - boxes[:, 1]
    return out
