"""Detection-level errors at one IoU and score threshold: a confusion matrix (classes + background) and
per-image true/false positives and false negatives (for the worst-images gallery).

Matching, per image, detections in descending score order:
  1. each detection takes the unmatched ground-truth box of its own class with the highest IoU >= thr
     (a true positive);
  2. a detection still unmatched takes the unmatched ground-truth box of another class with the highest
     IoU >= thr (a confusion: a false positive and a false negative, counted off the diagonal);
  3. a detection still unmatched that lies inside a crowd region of its class (intersection / detection
     area >= thr, COCO's crowd IoU) is ignored, as COCO ignores it; any other is a false positive
     (background).
Crowd boxes are never false negatives. Matrix rows are ground truth, columns predictions, the last row and
column "background".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from cvpipe.vision.boxes import box_intersection, box_iou, xywh_to_xyxy

BACKGROUND = "background"


def _xyxy(coco_boxes) -> np.ndarray:
    """COCO xywh boxes (a possibly empty list) as an N x 4 float64 xyxy array."""
    return xywh_to_xyxy(np.asarray(coco_boxes, dtype=np.float64).reshape(-1, 4))


def _inside_fraction(dets: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Intersection / detection area, N x M (COCO's IoU for a crowd ground truth)."""
    inter = box_intersection(dets, regions)
    area = ((dets[:, 2] - dets[:, 0]).clip(0) * (dets[:, 3] - dets[:, 1]).clip(0))[:, None]
    return np.where(area > 0, inter / np.where(area > 0, area, 1), 0.0)


@dataclass
class ImageErrors:
    """One image's outcome. Indices point into the image's non-crowd GT / thresholded detection lists."""

    image_id: int
    gt_boxes: np.ndarray  # G x 4 xyxy (non-crowd)
    gt_labels: np.ndarray  # G class index
    det_boxes: np.ndarray  # D x 4 xyxy (score >= thr, descending score)
    det_labels: np.ndarray
    det_scores: np.ndarray
    tp_det: list[int] = field(default_factory=list)
    tp_gt: list[int] = field(default_factory=list)
    fp: list[int] = field(default_factory=list)  # detections: background or wrong class
    fn: list[int] = field(default_factory=list)  # ground truth: missed or wrongly classified
    ignored: list[int] = field(default_factory=list)  # detections inside crowd regions

    @property
    def tp(self) -> int:
        return len(self.tp_det)

    @property
    def errors(self) -> int:
        return len(self.fp) + len(self.fn)

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + len(self.fp) + len(self.fn)
        return 1.0 if denom == 0 else 2 * self.tp / denom


@dataclass
class ConfusionResult:
    matrix: np.ndarray  # (K+1) x (K+1) counts, rows GT, columns predictions, index K = background
    names: list[str]  # K class names + "background"
    cat_ids: list[int]  # K category ids
    iou_thr: float
    score_thr: float
    images: list[ImageErrors]

    @property
    def totals(self) -> dict[str, int]:
        tp = sum(i.tp for i in self.images)
        fp = sum(len(i.fp) for i in self.images)
        fn = sum(len(i.fn) for i in self.images)
        return {"tp": tp, "fp": fp, "fn": fn}

    def worst_images(self, n: int) -> list[ImageErrors]:
        """Lowest F1 first; among equals, most errors first; images without GT or detections never."""
        cand = [i for i in self.images if i.errors > 0]
        return sorted(cand, key=lambda i: (i.f1, -i.errors, i.image_id))[:n]

    def to_dict(self) -> dict:
        return {"iou_thr": self.iou_thr, "score_thr": self.score_thr, "names": self.names,
                "matrix": self.matrix.astype(int).tolist(), **self.totals}


def match_image(image_id: int, gt_boxes, gt_labels, crowd_boxes, crowd_labels, det_boxes, det_labels, det_scores,
                iou_thr: float) -> tuple[ImageErrors, list[tuple[int, int]]]:
    """Match one image (see module doc). Returns its errors and the (gt index, det index) confusions."""
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    res = ImageErrors(image_id, np.asarray(gt_boxes, np.float64).reshape(-1, 4), np.asarray(gt_labels, np.int64),
                      np.asarray(det_boxes, np.float64).reshape(-1, 4)[order], np.asarray(det_labels, np.int64)[order],
                      np.asarray(det_scores, np.float64)[order])
    g, d = len(res.gt_boxes), len(res.det_boxes)
    iou = box_iou(res.det_boxes, res.gt_boxes) if g and d else np.zeros((d, g))
    gt_used = np.zeros(g, bool)
    det_match = np.full(d, -1)
    same = res.det_labels[:, None] == res.gt_labels[None, :]
    for pass_same_class in (True, False):
        for i in range(d):
            if det_match[i] >= 0:
                continue
            cand = (iou[i] >= iou_thr) & ~gt_used & (same[i] if pass_same_class else ~same[i])
            if cand.any():
                j = int(np.argmax(np.where(cand, iou[i], -1.0)))
                gt_used[j] = True
                det_match[i] = j
    confusions = []
    crowd = np.asarray(crowd_boxes, np.float64).reshape(-1, 4)
    inside = _inside_fraction(res.det_boxes, crowd) if len(crowd) and d else np.zeros((d, 0))
    inside = inside * (res.det_labels[:, None] == np.asarray(crowd_labels, np.int64)[None, :])
    for i in range(d):
        j = det_match[i]
        if j >= 0 and same[i, j]:
            res.tp_det.append(i)
            res.tp_gt.append(int(j))
        elif j >= 0:
            res.fp.append(i)
            confusions.append((int(j), i))
        elif (inside[i] >= iou_thr).any():
            res.ignored.append(i)
        else:
            res.fp.append(i)
    matched_same = set(res.tp_gt)
    res.fn = [j for j in range(g) if j not in matched_same]
    return res, confusions


def confusion_matrix(gt: dict, detections: list[dict], iou_thr: float = 0.5, score_thr: float = 0.3) -> ConfusionResult:
    """gt: COCO instances dict; detections: COCO results (bbox xywh). Classes are gt's categories."""
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    cat_ids = [int(c["id"]) for c in cats]
    index = {c: k for k, c in enumerate(cat_ids)}
    k_bg = len(cat_ids)
    gts: defaultdict[int, list] = defaultdict(list)
    crowds: defaultdict[int, list] = defaultdict(list)
    dets: defaultdict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        (crowds if a.get("iscrowd", 0) else gts)[a["image_id"]].append(a)
    for det in detections:
        if det["score"] >= score_thr:
            if det["category_id"] not in index:
                raise ValueError(f"detection category_id {det['category_id']} is not a ground-truth category")
            dets[det["image_id"]].append(det)
    matrix = np.zeros((k_bg + 1, k_bg + 1), dtype=np.int64)
    images = []
    for img in gt["images"]:
        iid = img["id"]
        g, c, dd = gts.get(iid, []), crowds.get(iid, []), dets.get(iid, [])
        res, confusions = match_image(
            iid,
            _xyxy([a["bbox"] for a in g]), [index[a["category_id"]] for a in g],
            _xyxy([a["bbox"] for a in c]), [index[a["category_id"]] for a in c],
            _xyxy([x["bbox"] for x in dd]), [index[x["category_id"]] for x in dd], [x["score"] for x in dd],
            iou_thr)
        for j in res.tp_gt:
            matrix[res.gt_labels[j], res.gt_labels[j]] += 1
        confused_gt = set()
        for j, i in confusions:
            matrix[res.gt_labels[j], res.det_labels[i]] += 1
            confused_gt.add(j)
        confused_det = {i for _, i in confusions}
        for j in res.fn:
            if j not in confused_gt:
                matrix[res.gt_labels[j], k_bg] += 1
        for i in res.fp:
            if i not in confused_det:
                matrix[k_bg, res.det_labels[i]] += 1
        images.append(res)
    names = [c["name"] for c in cats] + [BACKGROUND]
    return ConfusionResult(matrix, names, cat_ids, iou_thr, score_thr, images)
