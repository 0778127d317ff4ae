from __future__ import annotations

import json

import pytest

from cvpipe.evaluation.compare import ap_gate, class_deltas, load_metrics, stat_deltas


def metrics(ap, ap50, person, cat, ips=10.0):
    return {"stats": {"AP": ap, "AP50": ap50}, "per_class_ap": {"person": person, "cat": cat, "toaster": -1.0},
            "speed": {"images_per_s": ips}}


def test_gate_off_or_without_previous_passes():
    assert ap_gate(0.1, 0.5, None)[0] is True
    assert ap_gate(0.1, None, 0.0)[0] is True


@pytest.mark.parametrize("current,previous,tol,ok", [
    (0.30, 0.30, 0.0, True),  # equal is no drop
    (0.31, 0.30, 0.0, True),  # a gain
    (0.29, 0.30, 0.0, False),
    (0.29, 0.30, 0.02, True),
    (0.27, 0.30, 0.02, False),
])
def test_gate_on_ap_drop(current, previous, tol, ok):
    passed, msg = ap_gate(current, previous, tol)
    assert passed is ok
    if not ok:
        assert "dropped" in msg and f"{previous - current:.4f}" in msg


def test_deltas():
    cur, prev = metrics(0.32, 0.5, 0.4, 0.1, ips=12.0), metrics(0.30, 0.55, 0.45, 0.3)
    rows = {r["metric"]: r for r in stat_deltas(cur, prev)}
    assert rows["AP"]["delta"] == pytest.approx(0.02)
    assert rows["AP50"]["delta"] == pytest.approx(-0.05)
    assert rows["images_per_s"]["delta"] == pytest.approx(2.0)
    cls = class_deltas(cur, prev)
    assert [r["class"] for r in cls] == ["cat", "person"]  # largest change first; undefined AP left out
    assert cls[0]["delta"] == pytest.approx(-0.2)


def test_load_metrics(tmp_path):
    assert load_metrics(None) is None
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.3, 0.5, 0.4, 0.2)))
    assert load_metrics(tmp_path)["stats"]["AP"] == 0.3
    with pytest.raises(FileNotFoundError):
        load_metrics(tmp_path / "missing")
