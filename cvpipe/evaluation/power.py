"""How often the promotion gate decides right: simulated candidate/champion pairs with independent errors on real
detections (benchmarks/bench_gate_power.py prints the power curve; tests pin the rule with it).

A *pool* is real detections (e.g. Megvii's YOLOX-Nano on real COCO images) matched once to the real ground
truth. A test set of n images is drawn from the pool with replacement; every drawn image is a new image whose
two models err independently:

- ranking errors: each detection's score is multiplied by exp(sigma * N(0, 1)), drawn per model;
- misses: each detection that matches an object is dropped with probability `miss`, drawn per model.

The champion has the base miss rate; a candidate `drop` AP worse has a higher one, calibrated on a large draw
so that its expected AP is `drop` lower. Matches stay as made on the real detections (a dropped true positive
leaves its object unmatched; in COCO a lower-scored duplicate could take it), which makes misses slightly
harsher than real, and is the same for both models; measured, it does not widen the interval (matching again
after the misses gives the same se: benchmarks/bench_gate_noise.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bootstrap import (
    ClassMatches,
    bootstrap_matches,
    class_aps,
    match_per_image,
    mean_over_classes,
)
from .gate import GateRule, gate_decision


@dataclass
class PoolClass:
    """One class of the pool, detections grouped by image (a slice per pool image)."""

    matches: ClassMatches  # ordered by image, then score
    start: np.ndarray  # per pool image: first detection
    count: np.ndarray  # per pool image: how many detections


@dataclass
class Pool:
    classes: dict[int, PoolClass]
    names: dict[int, str]
    images: int

    @classmethod
    def from_detections(cls, gt: dict, detections: list[dict]) -> Pool:
        ids, matches = match_per_image(gt, detections)
        classes = {}
        for cat, m in matches.items():
            order = np.argsort(m.image, kind="stable")  # score order kept inside each image
            by_image = ClassMatches(m.scores[order], m.image[order], m.tp[:, order], m.fp[:, order], m.n_gt)
            count = np.bincount(by_image.image, minlength=len(ids))
            classes[cat] = PoolClass(by_image, np.concatenate([[0], np.cumsum(count)[:-1]]), count)
        return cls(classes, {int(c["id"]): c["name"] for c in gt["categories"]}, len(ids))


def draw_model(pool: Pool, source: np.ndarray, rng: np.random.Generator, miss: float,
               sigma: float) -> dict[int, ClassMatches]:
    """One model's matches on the test set made of pool images `source` (each a new image), with its own errors."""
    out = {}
    for cat, pc in pool.classes.items():
        lengths = pc.count[source]
        total = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        idx = np.repeat(pc.start[source] - offsets, lengths) + np.arange(total)
        image = np.repeat(np.arange(len(source)), lengths)
        m = pc.matches
        tp, fp = m.tp[:, idx], m.fp[:, idx]
        keep = ~(tp.any(axis=0) & (rng.random(total) < miss))
        scores = m.scores[idx] * np.exp(sigma * rng.standard_normal(total))
        order = np.argsort(-scores[keep], kind="mergesort")
        out[cat] = ClassMatches(scores[keep][order], image[keep][order], tp[:, keep][:, order],
                                fp[:, keep][:, order], m.n_gt[source].astype(float))
    return out


def expected_ap(pool: Pool, miss: float, sigma: float, images: int = 5000, draws: int = 4, seed: int = 99) -> float:
    """Mean AP of a model with these error rates over large draws (for calibration)."""
    rng = np.random.default_rng(seed)
    aps = []
    for _ in range(draws):
        source = rng.integers(0, pool.images, images)
        aps.append(mean_over_classes(class_aps(draw_model(pool, source, rng, miss, sigma), np.ones((1, images)))[0])[0])
    return float(np.mean(aps))


def miss_for_drop(pool: Pool, drop: float, base_miss: float, sigma: float) -> float:
    """The miss rate whose expected AP is `drop` below the base model's (secant steps on a near-linear curve)."""
    if drop <= 0:
        return base_miss
    target = expected_ap(pool, base_miss, sigma) - drop
    lo, hi = base_miss, min(0.95, base_miss + 10 * drop)
    f_lo, f_hi = expected_ap(pool, lo, sigma) - target, expected_ap(pool, hi, sigma) - target
    for _ in range(6):
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else (lo + hi) / 2
        f_mid = expected_ap(pool, mid, sigma) - target
        lo, f_lo, hi, f_hi = hi, f_hi, mid, f_mid
        if abs(f_mid) < drop * 0.02:
            break
    return float(hi)


def trial_verdicts(pool: Pool, images: int, candidate_miss: float, rule: GateRule, trials: int, seed: int,
                   base_miss: float = 0.05, sigma: float = 0.3, resamples: int = 200,
                   candidate_pool: Pool | None = None) -> dict[str, float]:
    """How often the gate promotes, holds and refuses over `trials` independent test sets and model pairs; and
    whether its interval has the right width: the spread of the AP difference over the trials (its true standard
    deviation) against the bootstrap's standard error, and how often a percentile interval's lower bound would
    have promoted instead. With `candidate_pool` (another real model's detections on the same images) the
    candidate is drawn from it: a real pair, whose errors differ as two checkpoints' do (base_miss and sigma
    then usually 0: the pool's own detections)."""
    rng = np.random.default_rng(seed)
    counts: dict[str, float] = {"promoted": 0, "held": 0, "refused": 0}
    deltas, stds, percentile_promoted = [], [], 0
    for t in range(trials):
        source = rng.integers(0, pool.images, images)
        champion = draw_model(pool, source, rng, base_miss, sigma)
        candidate = draw_model(candidate_pool or pool, source, rng, candidate_miss, sigma)
        boot = bootstrap_matches(list(range(images)), candidate, champion, pool.names, resamples,
                                 seed=seed * 100_003 + t, confidence=rule.confidence)
        counts[gate_decision(boot, rule, "champion")["verdict"]] += 1
        deltas.append(boot["delta"])
        stds.append(boot["std"])
        percentile_promoted += boot["ci_percentile"][0] >= -rule.margin
    return counts | {"mean_se": float(np.mean(stds)), "mean_delta": float(np.mean(deltas)),
                     "sd_delta": float(np.std(deltas, ddof=1)) if trials > 1 else float("nan"),
                     "percentile_promoted": percentile_promoted}
