"""From a queue score to the chance that the entry is a real error, read off the self-test: the share of
self-test entries near that score (same type) that were injected errors. Used for the expected AP gain of an
entry and for the per-class noise rates. An estimate: the self-test's data holds its injected errors on top of
the real ones, and precision is measured against the injected ones only.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd


def hit_rate_curve(scores: np.ndarray, hit: np.ndarray, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(score, local hit rate) at the centres of `bins` equal-count score bins, score ascending."""
    if len(scores) == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 0.0])
    order = np.argsort(scores, kind="stable")
    s, h = np.asarray(scores, float)[order], np.asarray(hit, float)[order]
    edges = np.linspace(0, len(s), min(bins, len(s)) + 1).astype(int)
    centres = np.array([s[a:b].mean() for a, b in pairwise(edges) if b > a])
    rates = np.array([h[a:b].mean() for a, b in pairwise(edges) if b > a])
    return centres, np.maximum.accumulate(rates)  # a higher score is never less likely an error


def error_probability(queue: pd.DataFrame, curve: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if curve is None or not len(queue):
        return np.full(len(queue), np.nan)
    return np.interp(queue["score"].to_numpy(float), *curve)


def noise_rates(queues: dict[str, pd.DataFrame], label_counts: pd.Series, class_names: list[str],
                likely: float = 0.5) -> pd.DataFrame:
    """Per class: labels, expected errors of each type and the estimated noise rate. Only entries the self-test
    calls more likely errors than not (p_error >= `likely`) count, each with its p_error: the self-test's hit
    rates are measured with 25 % injected errors, so the low-score entries' small but non-zero rates, summed over
    every label, would count the injection rather than the data. A missing box counts for its proposed class,
    other types for the label's class."""
    rows = pd.DataFrame({"class": class_names,
                         "labels": [int(label_counts.get(i, 0)) for i in range(len(class_names))]})
    for kind, q in queues.items():
        col = "proposal_label" if kind == "missing" else "label"
        sure = q[q["p_error"] >= likely]
        expected = sure.groupby(col)["p_error"].sum() if len(sure) else pd.Series(dtype=float)
        rows[kind] = [float(expected.get(i, 0.0)) for i in range(len(class_names))]
    kinds = list(queues)
    rows["expected_errors"] = rows[kinds].sum(axis=1)
    rows["noise_rate"] = rows["expected_errors"] / rows["labels"].clip(lower=1)
    return rows.sort_values("noise_rate", ascending=False).reset_index(drop=True)
