"""Injection does what it says, and the self-test can tell a model that sees the errors from one that cannot."""

from __future__ import annotations

import numpy as np
from conftest import SIZES, agreeing_model, grid_labels

from cvpipe.labels.boxes import BoxTable, pair_iou
from cvpipe.labels.inject import inject_errors
from cvpipe.labels.score import ERROR_TYPES
from cvpipe.labels.selftest import self_test, summarize


def test_injection_counts_and_geometry():
    labels = grid_labels()
    inj = inject_errors(labels, SIZES, num_classes=4, rate=0.2, seed=3)
    per_type = round(0.2 * len(labels))
    assert (inj.truth.groupby("type").size() == per_type).all() and set(inj.truth["type"]) == set(ERROR_TYPES)
    assert len(inj.labels) == len(labels) - per_type + 2 * per_type  # dropped, plus duplicates and spawned
    noisy = dict(zip(inj.labels.ann_id, range(len(inj.labels))))
    orig = dict(zip(labels.ann_id, range(len(labels))))
    moved = inj.truth[inj.truth["type"] == "bad_location"]
    rows = [noisy[a] for a in moved["ann_id"]]
    iou = pair_iou(inj.labels.xyxy[rows], moved[["x1", "y1", "x2", "y2"]].to_numpy())
    assert ((iou >= 0.2) & (iou <= 0.6)).all()  # moved enough to be wrong, still over the object
    flipped = inj.truth[inj.truth["type"] == "wrong_class"]["ann_id"]
    assert all(inj.labels.label[noisy[a]] != labels.label[orig[a]] for a in flipped)
    spawned = inj.truth[inj.truth["type"] == "spurious"]
    assert (spawned["x1"] >= 0).all() and (spawned["x2"] <= 640).all() and (spawned["y2"] <= 480).all()
    other = inject_errors(labels, SIZES, num_classes=4, rate=0.2, seed=4)
    assert not inj.truth.equals(other.truth)  # seeds are independent draws


def test_a_model_that_sees_the_objects_finds_the_injected_errors():
    labels = grid_labels()
    test = self_test(labels, agreeing_model(labels, shift=2.0), None, SIZES, 4, seeds=3)  # boxes as a model draws them
    summary = summarize(test.table).set_index("type")
    print(summary.round(3).to_string())
    assert summary.loc["overall", "recall"] >= 0.95
    for kind in ERROR_TYPES:
        assert summary.loc[kind, "recall_min"] >= 0.9, kind
    _, rates = test.curves["wrong_class"]
    assert np.all(np.diff(rates) >= 0) and rates[-1] > 0.5


def test_a_blind_model_finds_nothing_that_needs_evidence():
    labels = grid_labels()
    none = BoxTable.build([], [], np.zeros((0, 4)))
    summary = summarize(self_test(labels, none, None, SIZES, 4, seeds=2).table).set_index("type")
    for kind in ("missing", "wrong_class", "bad_location"):
        assert summary.loc[kind, "recall"] == 0.0, kind
    assert summary.loc["overall", "recall"] < 0.5


def test_noise_rates_count_likely_errors_for_the_right_class():
    import pandas as pd

    from cvpipe.labels.calibrate import noise_rates

    def q(label, proposal, p):
        return pd.DataFrame({"label": label, "proposal_label": proposal, "p_error": p})

    queues = {"missing": q([-1, -1], [1, 1], [0.9, 0.2]), "spurious": q([0, 0, 0], [-1] * 3, [0.6, 0.4, 0.4]),
              "wrong_class": q([1], [0], [0.5]), "bad_location": q([], [], []), "duplicate": q([], [], [])}
    rates = noise_rates(queues, pd.Series({0: 10, 1: 5}), ["cat", "dog"]).set_index("class")
    assert rates.loc["cat", "expected_errors"] == 0.6  # the 0.4 entries are less likely errors than not
    # a missing box is its proposal's
    assert rates.loc["dog", "missing"] == 0.9 and rates.loc["dog", "wrong_class"] == 0.5
    assert abs(rates.loc["dog", "noise_rate"] - 1.4 / 5) < 1e-12


def test_the_merged_queue_ranks_each_run_with_the_other_runs_hit_rates():
    from cvpipe.labels.selftest import merged_queue

    def run(missing_hits, spurious_hits):
        empty = (np.zeros(0), np.zeros(0, np.int64))
        out = dict.fromkeys(ERROR_TYPES, empty)
        out["missing"] = (np.array([0.9, 0.8]), np.array(missing_hits))
        out["spurious"] = (np.array([0.5, 0.4, 0.3]), np.array(spurious_hits))
        return out

    # run 0 on its own answers would trust its missing queue; run 1 says missing entries never are errors
    runs = [run([-1, 0], [0, 1, 0]), run([-1, -1], [0, 1, 0])]
    got = merged_queue(runs, 0, injected=3, top=2)
    assert got["precision"] == 1.0  # the two spurious entries first, by run 1's hit rates
    assert got["found"] == 3 and got["recall"] == 1.0  # spurious error 0 found twice counts once
