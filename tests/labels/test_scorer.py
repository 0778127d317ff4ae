"""The scorer: vectorised joins equal a brute-force loop, and each queue puts its own kind of error first."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import agreeing_model, grid_labels

from cvpipe.labels.boxes import (
    BoxTable,
    image_pairs,
    pair_iou,
    segment_argmax,
    segment_max,
)
from cvpipe.labels.score import ERROR_TYPES, score_labels
from cvpipe.vision.boxes import box_iou


def random_table(n: int, images: int, seed: int) -> BoxTable:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    return BoxTable.build(rng.integers(0, images, n), rng.integers(0, 3, n),
                          np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2))], 1), rng.uniform(0, 1, n))


def test_image_pairs_are_every_same_image_pair_once():
    a, b = random_table(200, 30, 1), random_table(150, 30, 2)
    ia, ib = image_pairs(a, b)
    got = set(zip(ia.tolist(), ib.tolist()))
    want = {(i, j) for i in range(len(a)) for j in range(len(b)) if a.image_id[i] == b.image_id[j]}
    assert got == want and len(ia) == len(want)
    assert np.all(np.diff(ia) >= 0)  # grouped by a, as segment_max / segment_argmax expect


def test_pair_iou_and_segments_match_the_dense_computation():
    a, b = random_table(60, 4, 3), random_table(80, 4, 4)
    ia, ib = image_pairs(a, b)
    iou = pair_iou(a.xyxy[ia], b.xyxy[ib])
    dense = box_iou(a.xyxy, b.xyxy) * (a.image_id[:, None] == b.image_id[None, :])
    np.testing.assert_allclose(iou, dense[ia, ib], atol=1e-12)
    np.testing.assert_allclose(segment_max(iou, ia, len(a)), dense.max(1), atol=1e-12)
    pick = segment_argmax(iou, ia, len(a))
    has = pick >= 0
    np.testing.assert_allclose(iou[pick[has]], dense.max(1)[has], atol=1e-12)


def _with_errors(labels: BoxTable) -> tuple[BoxTable, dict]:
    """One error of each kind planted by hand in image 1..5 (label rows are 6 per image, sorted)."""
    image_id, label, xyxy, ann = labels.image_id.copy(), labels.label.copy(), labels.xyxy.copy(), labels.ann_id.copy()
    flip = 6  # image 2, first box
    label[flip] = (label[flip] + 1) % 4
    move = 12  # image 3
    w = xyxy[move, 2] - xyxy[move, 0]
    xyxy[move] += [0.6 * w, 0, 0.6 * w, 0]
    keep = np.ones(len(labels), bool)
    keep[18] = False  # image 4: dropped -> missing
    dup_box, dup_label = xyxy[24] + 1.0, label[24]  # image 5
    spawn = [150.0, 380.0, 200.0, 430.0]  # image 1, where nothing is
    noisy = BoxTable.build(np.r_[image_id[keep], 5, 1], np.r_[label[keep], dup_label, 0],
                           np.concatenate([xyxy[keep], [dup_box], [spawn]]), None,
                           np.r_[ann[keep], 9001, 9002])
    truth = {"wrong_class": ann[flip], "bad_location": ann[move], "missing": labels.xyxy[18],
             "duplicate": 9001, "spurious": 9002}
    return noisy, truth


def test_every_queue_puts_its_planted_error_first():
    clean = grid_labels()
    noisy, truth = _with_errors(clean)
    model = agreeing_model(clean)
    # an ambiguous object: its own class predicted at 0.9 and another at 0.95 -- weak evidence of a wrong class,
    # far weaker than a label whose own class the model does not see at all
    ambiguous = BoxTable.build(np.r_[model.image_id, 7], np.r_[model.label, (clean.label[36] + 1) % 4],
                               np.concatenate([model.xyxy, clean.xyxy[36:37]]), np.r_[model.score, 0.95])
    queues = score_labels(noisy, ambiguous)
    assert set(queues) == set(ERROR_TYPES)
    for kind in ("wrong_class", "bad_location", "spurious"):
        assert queues[kind]["ann_id"].iloc[0] == truth[kind], (kind, queues[kind].head(3))
    dup = queues["duplicate"].iloc[0]
    assert truth["duplicate"] in (dup["ann_id"], dup["other_ann_id"])
    top = queues["missing"].iloc[0]
    assert np.allclose([top.px1, top.py1, top.px2, top.py2], truth["missing"])
    assert queues["wrong_class"]["proposal_label"].iloc[0] == clean.label[6]  # the class the model sees


def test_a_clean_dataset_scores_nothing_but_weak_noise():
    clean = grid_labels()
    queues = score_labels(clean, agreeing_model(clean))
    assert len(queues["wrong_class"]) == len(queues["bad_location"]) == len(queues["duplicate"]) == 0
    assert (queues["spurious"]["score"] < 0.2).all()  # every label has its prediction under it
    assert len(queues["missing"]) == 0  # the stray boxes score 0.01, under miss_min_score


def test_a_crowd_region_covers_the_predictions_inside_it():
    clean = grid_labels(images=2)
    keep = np.flatnonzero(clean.ann_id != 1)
    labels = clean.take(keep)
    crowd = BoxTable.build([1], [0], [clean.xyxy[clean.ann_id == 1][0] + [-5, -5, 5, 5]])
    found = score_labels(labels, agreeing_model(clean))["missing"]
    covered = score_labels(labels, agreeing_model(clean), crowd)["missing"]
    assert len(found) == 1 and len(covered) == 0


@pytest.mark.parametrize("n_images", [0, 1])
def test_tiny_inputs_give_empty_or_small_queues(n_images):
    labels = grid_labels(images=n_images) if n_images else BoxTable.build([], [], np.zeros((0, 4)))
    queues = score_labels(labels, BoxTable.build([], [], np.zeros((0, 4))))
    assert all(list(q.columns[:2]) == ["type", "rank"] for q in queues.values())


def test_an_object_in_front_of_another_class_is_still_missing():
    """A person nobody labelled in front of a labelled horse, overlapping its label at IoU 0.43: a prediction is
    covered by a label (of another class) only from IoU 0.5, the IoU at which it would match one."""
    horse, person, other_person = [100.0, 100.0, 300.0, 300.0], [180.0, 100.0, 380.0, 300.0], [450, 100, 550, 300]
    assert 0.4 < pair_iou(np.array([horse]), np.array([person]))[0] < 0.5
    labels = BoxTable.build([1, 1], [0, 1], [horse, other_person], None, [1, 2])
    preds = BoxTable.build([1, 1, 1], [0, 1, 1], [horse, person, other_person], [0.9, 0.8, 0.85])
    missing = score_labels(labels, preds)["missing"]
    assert missing[["px1", "py1", "px2", "py2"]].to_numpy().tolist() == [person]
