"""Confusion matrix and per-image errors on a hand-built case with known counts."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.evaluation.confusion import box_iou, confusion_matrix

A, B, C = 1, 2, 5  # category ids (not contiguous, as in COCO)


def ann(i, img, cat, bbox, crowd=0):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd}


def det(img, cat, bbox, score):
    return {"image_id": img, "category_id": cat, "bbox": bbox, "score": score}


@pytest.fixture
def case():
    gt = {"images": [{"id": k, "width": 200, "height": 200, "file_name": f"{k}.jpg"} for k in (1, 2, 3, 4)],
          "categories": [{"id": C, "name": "bird"}, {"id": A, "name": "cat"}, {"id": B, "name": "dog"}],
          "annotations": [
              ann(1, 1, A, [0, 0, 50, 50]), ann(2, 1, B, [100, 0, 50, 50]), ann(3, 1, C, [0, 100, 40, 40]),
              ann(4, 1, B, [100, 100, 100, 100], crowd=1),
              ann(5, 3, A, [0, 0, 60, 60]),
              ann(6, 4, A, [0, 0, 50, 50]), ann(7, 4, B, [5, 5, 50, 50])]}
    dets = [
        det(1, A, [2, 2, 50, 50], 0.9),  # TP
        det(1, C, [100, 2, 50, 50], 0.8),  # dog taken for a bird: confusion
        det(1, A, [150, 150, 30, 30], 0.7),  # a cat inside the dog crowd region: a false positive
        det(1, B, [0, 0, 50, 50], 0.1),  # under the score threshold: not counted
        det(1, B, [120, 120, 40, 40], 0.6),  # a dog inside the dog crowd region: ignored
        det(2, B, [10, 10, 20, 20], 0.5),  # image without GT: false positive
        det(3, A, [0, 0, 60, 60], 0.95),  # TP
        det(3, A, [1, 1, 60, 60], 0.85),  # duplicate: false positive
        # same-class matches come first even when another class' box overlaps the detection more
        det(4, B, [0, 0, 50, 50], 0.9),  # IoU 1.0 with the cat, 0.68 with the dog -> TP on the dog
        det(4, A, [6, 6, 50, 50], 0.8),  # IoU 0.63 with the cat -> TP on the cat
    ]
    return gt, dets


def test_box_iou_by_hand():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0]])


def test_confusion_counts(case):
    gt, dets = case
    cm = confusion_matrix(gt, dets, iou_thr=0.5, score_thr=0.3)
    assert cm.names == ["cat", "dog", "bird", "background"]  # category id order, background last
    cat, dog, bird, bg = range(4)
    expected = np.zeros((4, 4), int)
    expected[cat, cat] = 3  # images 1, 3, 4
    expected[dog, dog] = 1  # image 4
    expected[dog, bird] = 1  # image 1
    expected[bird, bg] = 1  # image 1: missed bird
    expected[bg, cat] = 2  # image 1 stray cat, image 3 duplicate
    expected[bg, dog] = 1  # image 2
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.totals == {"tp": 4, "fp": 4, "fn": 2}
    per = {i.image_id: i for i in cm.images}
    assert (per[1].tp, len(per[1].fp), len(per[1].fn), len(per[1].ignored)) == (1, 2, 2, 1)
    assert per[1].f1 == pytest.approx(2 / 6)
    assert (per[2].tp, len(per[2].fp), len(per[2].fn)) == (0, 1, 0) and per[2].f1 == 0
    assert per[3].f1 == pytest.approx(2 / 3)
    assert per[4].f1 == 1.0 and per[4].errors == 0
    assert [i.image_id for i in cm.worst_images(10)] == [2, 1, 3]


def test_crowd_regions_ignore_only_their_own_class(case):
    gt, dets = case
    base = confusion_matrix(gt, dets, iou_thr=0.5, score_thr=0.3)
    # the ignored dog inside the dog crowd becomes a false positive once the crowd box is gone
    no_crowd = {**gt, "annotations": [a for a in gt["annotations"] if not a["iscrowd"]]}
    plain = confusion_matrix(no_crowd, dets, iou_thr=0.5, score_thr=0.3)
    assert plain.matrix[3, 1] == base.matrix[3, 1] + 1
    assert plain.totals["fp"] == base.totals["fp"] + 1 and plain.totals["tp"] == base.totals["tp"]
    # a crowd region is never a false negative
    assert base.matrix[1].sum() == 2  # the two non-crowd dogs


def test_thresholds_change_the_counts(case):
    gt, dets = case
    low = confusion_matrix(gt, dets, iou_thr=0.5, score_thr=0.05)  # the 0.1-score dog on the cat now counts
    assert low.totals["fp"] == confusion_matrix(gt, dets, 0.5, 0.3).totals["fp"] + 1
    strict = confusion_matrix(gt, dets, iou_thr=0.9, score_thr=0.3)
    # at IoU 0.9 the jittered cat of image 4 ([6,6] vs [0,0]) and its dog no longer match
    assert strict.totals["tp"] < 4


def test_unknown_category_is_an_error(case):
    gt, dets = case
    with pytest.raises(ValueError, match="category_id 99"):
        confusion_matrix(gt, dets + [det(1, 99, [0, 0, 5, 5], 0.9)])
