"""Compare an evaluation with the previous one: deltas, and a gate on the AP drop."""

from __future__ import annotations

import json
from pathlib import Path

from cvpipe.evaluation.coco import STAT_NAMES


class APDropError(RuntimeError):
    """The new model's AP fell further below the previous evaluation's than allowed."""


def load_metrics(metrics_dir: str | Path | None) -> dict | None:
    """metrics.json of a `metrics` entity dir (None when there is no previous run)."""
    if metrics_dir is None:
        return None
    p = Path(metrics_dir) / "metrics.json"
    if not p.is_file():
        raise FileNotFoundError(f"previous evaluation has no metrics.json: {p}")
    return json.loads(p.read_text())


def stat_deltas(current: dict, previous: dict) -> list[dict]:
    """Rows {metric, previous, current, delta} for the 12 COCO numbers and speed (metrics.json layout)."""
    rows = []
    cs, ps = current.get("stats", {}), previous.get("stats", {})
    for name in STAT_NAMES:
        if name in cs and name in ps:
            rows.append({"metric": name, "previous": ps[name], "current": cs[name], "delta": cs[name] - ps[name]})
    cv, pv = current.get("speed", {}).get("images_per_s"), previous.get("speed", {}).get("images_per_s")
    if cv is not None and pv is not None:
        rows.append({"metric": "images_per_s", "previous": pv, "current": cv, "delta": cv - pv})
    return rows


def class_deltas(current: dict, previous: dict, top: int | None = None) -> list[dict]:
    """Rows {class, previous, current, delta} for classes in both with AP defined, largest |delta| first."""
    cp, pp = current.get("per_class_ap", {}), previous.get("per_class_ap", {})
    rows = [{"class": n, "previous": pp[n], "current": cp[n], "delta": cp[n] - pp[n]}
            for n in cp if n in pp and cp[n] >= 0 and pp[n] >= 0]
    rows.sort(key=lambda r: -abs(r["delta"]))
    return rows[:top] if top else rows


def ap_gate(current_ap: float, previous_ap: float | None, max_ap_drop: float | None) -> tuple[bool, str]:
    """(passed, message). Off when max_ap_drop is None or there is no previous AP."""
    if max_ap_drop is None:
        return True, "AP gate off (max_ap_drop is None)"
    if previous_ap is None:
        return True, "AP gate: no previous evaluation to compare with"
    drop = previous_ap - current_ap
    if drop > max_ap_drop + 1e-12:
        return False, (f"AP dropped by {drop:.4f} (from {previous_ap:.4f} to {current_ap:.4f}), "
                       f"more than max_ap_drop={max_ap_drop}")
    return True, f"AP change {-drop:+.4f} (from {previous_ap:.4f} to {current_ap:.4f}) within max_ap_drop={max_ap_drop}"
