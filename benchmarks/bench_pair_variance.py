"""Where the noise of a real pair's AP difference comes from: on test sets of --images images drawn from the pair's
held-out images (make_pair_detections.py), the bootstrap standard error of each model's AP and of their paired
difference, the correlation of the two models' resampled APs (what pairing removes), how often the interval
covers the difference on the whole pool, and the share of the difference's variance carried by classes with few
instances in the test set (COCO's AP is an unweighted mean over classes).

    .venv/bin/python benchmarks/bench_pair_variance.py pairs/gt.json pairs/s0.json pairs/s1.json --trials 40 \
        --json pair_variance.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_eval import draw_test_set

from cvpipe.evaluation.bootstrap import match_pair, mean_over_classes, resample_weights, threshold_aps
from cvpipe.evaluation.coco import results_array

BUCKETS = ((1, 5), (6, 20), (21, 100), (101, 10**9))  # instances of a class in the test set
OTHER = 10**6  # the candidate's category ids are shifted by this, so one draw carries both models


def model_aps(gt: dict, candidate: list[dict], champion: list[dict], weights_of) -> tuple:
    """(champion B x C AP, candidate B x C AP, instances per class) on resamples of gt's images."""
    ids, cand, champ = match_pair(gt, results_array(candidate), results_array(champion))
    w = weights_of(len(ids))
    return (threshold_aps(champ, w).mean(axis=2), threshold_aps(cand, w).mean(axis=2),
            np.array([m.n_gt.sum() for m in champ.values()]))


def trial(gt: dict, both: list[dict], images: int, resamples: int, seed: int, pool_delta: float) -> dict:
    gt_t, dets = draw_test_set(gt, both, images, seed=seed)
    champion = [d for d in dets if d["category_id"] < OTHER]
    candidate = [{**d, "category_id": d["category_id"] - OTHER} for d in dets if d["category_id"] >= OTHER]
    ap_a, ap_b, instances = model_aps(gt_t, candidate, champion, lambda n: np.concatenate(
        [np.ones((1, n)), resample_weights(n, resamples, seed)]))
    a, b = mean_over_classes(ap_a), mean_over_classes(ap_b)
    d = b - a
    se = float(d[1:].std(ddof=1))
    has = instances > 0
    per_class = np.nan_to_num((ap_b - ap_a)[1:, has])  # a class absent from a resample adds nothing
    cov = np.cov(per_class.T)
    inst = instances[has]
    share = {}
    for lo, hi in BUCKETS:
        sel = (inst >= lo) & (inst <= hi)
        share[f"{lo}-{hi}"] = [int(sel.sum()), float(cov[np.ix_(sel, sel)].sum() / cov.sum())]
    return {"delta": float(d[0]), "se": se, "se_champion": float(a[1:].std(ddof=1)),
            "se_candidate": float(b[1:].std(ddof=1)), "rho": float(np.corrcoef(a[1:], b[1:])[0, 1]),
            "covers_pool": bool(abs(d[0] - pool_delta) <= 1.96 * se), "variance_share": share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gt", type=Path)
    ap.add_argument("champion", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--resamples", type=int, default=400)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    gt = json.loads(args.gt.read_text())
    champion, candidate = (json.loads(p.read_text()) for p in (args.champion, args.candidate))
    both = champion + [{**d, "category_id": d["category_id"] + OTHER} for d in candidate]
    ap_a, ap_b, _ = model_aps(gt, candidate, champion, lambda n: np.ones((1, n)))
    pool_delta = float(mean_over_classes(ap_b)[0] - mean_over_classes(ap_a)[0])
    rows = []
    for t in range(args.trials):
        rows.append(trial(gt, both, args.images, args.resamples, 100 + t, pool_delta))
        print(json.dumps(rows[-1]), flush=True)
    deltas = np.array([r["delta"] for r in rows])
    summary = {"images": args.images, "trials": args.trials, "resamples": args.resamples, "pool_delta": pool_delta,
               "mean_delta": float(deltas.mean()), "sd_delta_over_trials": float(deltas.std(ddof=1)),
               **{f"mean_{k}": float(np.mean([r[k] for r in rows])) for k in ("se", "se_champion", "se_candidate",
                                                                             "rho")},
               "coverage": float(np.mean([r["covers_pool"] for r in rows])),
               "variance_share": {f"{lo}-{hi}": [float(np.mean([r["variance_share"][f"{lo}-{hi}"][i] for r in rows]))
                                                 for i in (0, 1)] for lo, hi in BUCKETS}}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "trials": rows}, indent=1))


if __name__ == "__main__":
    main()
