"""Tiled prediction: the whole image plus 2 x 2 overlapping crops, merged by per-class NMS.

Why: the label scorer can only judge a label the model sees. The COCO YOLOX-Nano at 416 px sees almost none of
the small COCO objects (measured in docs/labels.md: 3 % of labels under 16 px have a same-class prediction
>= 0.1), so each crop is letterboxed at about 1.7 x the whole image's scale. A crop's boxes that touch one of
its inner edges are dropped: the object is cut there, and the neighbouring crop or the whole image holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cvpipe.vision import Detections
from cvpipe.vision.boxes import box_iou
from cvpipe.vision.yolox_decode import nms

PredictBatch = Callable[[Sequence[np.ndarray]], "list[Detections]"]


def crop_windows(height: int, width: int, share: float = 0.6) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the 2 x 2 crops, each `share` of the image per side, overlapping in the middle."""
    ch, cw = round(height * share), round(width * share)
    return [(x0, y0, x0 + cw, y0 + ch) for y0 in (0, height - ch) for x0 in (0, width - cw)]


def tiled(predict_batch: PredictBatch, nms_thr: float = 0.65, max_det: int = 100, edge_px: float = 2.0
          ) -> PredictBatch:
    """A predict_batch that also predicts the 4 crops of every image and merges everything."""

    def predict(images: Sequence[np.ndarray]) -> list[Detections]:
        whole = predict_batch(images)
        windows = [crop_windows(*im.shape[:2]) for im in images]
        crops = [np.ascontiguousarray(im[y0:y1, x0:x1]) for im, ws in zip(images, windows) for x0, y0, x1, y1 in ws]
        parts = predict_batch(crops)
        out = []
        for i, (im, det) in enumerate(zip(images, whole)):
            h, w = im.shape[:2]
            boxes, scores, labels = [det.boxes], [det.scores], [det.labels]
            for (x0, y0, x1, y1), part in zip(windows[i], parts[4 * i:4 * i + 4]):
                b = part.boxes + np.array([x0, y0, x0, y0], np.float32)
                inner = ((b[:, 0] <= x0 + edge_px) & (x0 > 0)) | ((b[:, 2] >= x1 - edge_px) & (x1 < w)) | \
                        ((b[:, 1] <= y0 + edge_px) & (y0 > 0)) | ((b[:, 3] >= y1 - edge_px) & (y1 < h))
                boxes.append(b[~inner])
                scores.append(part.scores[~inner])
                labels.append(part.labels[~inner])
            out.append(_merge(np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels), (h, w),
                              nms_thr, max_det))
        return out

    return predict


def _merge(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, size: tuple[int, int], nms_thr: float,
           max_det: int) -> Detections:
    if not len(scores):
        return Detections.empty(size)
    offset = labels[:, None].astype(np.float32) * (float(boxes.max()) + 1.0)  # per-class NMS in one call
    keep = nms(boxes + offset, scores, nms_thr)[:max_det]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32),
                      labels[keep].astype(np.int64), size)


def flipped(predict_batch: PredictBatch, match_iou: float = 0.55, max_det: int = 100) -> PredictBatch:
    """A predict_batch that also predicts each image mirrored left-right and keeps what both views agree on.

    Each box of the union (after per-class NMS) gets the mean of its own score and the best score of a
    same-class box of the *other* view at IoU >= `match_iou` (0 where that view saw nothing there). The idea: a
    real object is seen in both views, a false positive mostly in one. Measured on COCO dev (docs/labels.md), it
    did not raise the self-test, so OOFParams.flip is off by default."""

    def predict(images: Sequence[np.ndarray]) -> list[Detections]:
        plain = predict_batch(images)
        mirrored = predict_batch([np.ascontiguousarray(im[:, ::-1]) for im in images])
        return [_agree(a, _unmirror(b, im.shape[1]), im.shape[:2], match_iou, max_det)
                for im, a, b in zip(images, plain, mirrored)]

    return predict


def _unmirror(det: Detections, width: int) -> Detections:
    boxes = det.boxes.copy()
    boxes[:, [0, 2]] = width - det.boxes[:, [2, 0]]
    return Detections(boxes, det.scores, det.labels, det.image_size)


def _agree(a: Detections, b: Detections, size: tuple[int, int], match_iou: float, max_det: int) -> Detections:
    boxes = np.concatenate([a.boxes, b.boxes])
    if not len(boxes):
        return Detections.empty(size)
    scores, labels = np.concatenate([a.scores, b.scores]), np.concatenate([a.labels, b.labels])
    view = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    iou = box_iou(boxes, boxes)
    other = (view[:, None] != view[None, :]) & (labels[:, None] == labels[None, :]) & (iou >= match_iou)
    support = np.where(other, scores[None, :], 0.0).max(1)
    agreed = ((scores + support) / 2).astype(np.float32)
    return _merge(boxes, agreed, labels, size, 0.65, max_det)
