"""Does the power simulation overstate the spread of the AP difference? bench_gate_power's models miss objects on
fixed matches (a dropped true positive leaves its object unmatched); COCO would let a lower-scored duplicate take
a missed object. Here the same misses (3 %) and score noise (exp(0.2 N(0, 1))) are put on the detections
themselves, which are then matched again; both simulations run on the same test sets and their mean bootstrap se
and the spread of the difference over trials are compared.

    .venv/bin/python benchmarks/bench_gate_noise.py --images 500 --trials 40
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from cvpipe.evaluation.bootstrap import bootstrap_matches, match_per_image, true_positive_rows
from cvpipe.evaluation.coco import results_array
from cvpipe.evaluation.power import Pool, draw_model

REPO = Path(__file__).resolve().parents[1]


def test_set(gt: dict, results: np.ndarray, source: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """(ground truth, result rows, new image ids) of the pool images `source`, each a new image."""
    image_ids = sorted(i["id"] for i in gt["images"])
    anns: dict[int, list] = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    images, annotations, rows, new_ids = [], [], [], []
    for n, k in enumerate(source, start=1):
        images.append({"id": n})
        annotations += [{**a, "image_id": n} for a in anns.get(image_ids[k], [])]
        found = np.nonzero(results[:, 0] == image_ids[k])[0]
        rows.append(found)
        new_ids.append(np.full(len(found), n))
    return ({"images": images, "annotations": annotations, "categories": gt["categories"]},
            np.concatenate(rows), np.concatenate(new_ids))


def noisy_model(results: np.ndarray, hits: np.ndarray, rows: np.ndarray, new_ids: np.ndarray,
                rng: np.random.Generator, miss: float, sigma: float) -> np.ndarray:
    out = results[rows].copy()
    out[:, 0] = new_ids
    out[:, 5] *= np.exp(sigma * rng.standard_normal(len(out)))
    return out[~(hits[rows] & (rng.random(len(out)) < miss))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/coco_real/dev")
    ap.add_argument("--cache", type=Path, required=True, help="detections JSON (bench_gate_power --cache)")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--miss", type=float, default=0.03)
    ap.add_argument("--sigma", type=float, default=0.2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    gt = json.loads((args.data / "annotations.json").read_text())
    dets = json.loads(args.cache.read_text())
    pool, results = Pool.from_detections(gt, dets), results_array(dets)
    hits = true_positive_rows(gt, results)
    rng = np.random.default_rng(21)
    found: dict[str, list] = {"matched again": [], "fixed matches (bench_gate_power)": []}
    t0 = time.perf_counter()
    for t in range(args.trials):
        source = rng.integers(0, pool.images, args.images)
        sub_gt, rows, new_ids = test_set(gt, results, source)
        a, b = (noisy_model(results, hits, rows, new_ids, rng, args.miss, args.sigma) for _ in range(2))
        ids, champion = match_per_image(sub_gt, a)
        _, candidate = match_per_image(sub_gt, b)
        r = bootstrap_matches(ids, candidate, champion, pool.names, args.resamples, seed=t)
        found["matched again"].append((r["delta"], r["std"]))
        champion, candidate = (draw_model(pool, source, rng, args.miss, args.sigma) for _ in range(2))
        r = bootstrap_matches(list(range(args.images)), candidate, champion, pool.names, args.resamples, seed=t)
        found["fixed matches (bench_gate_power)"].append((r["delta"], r["std"]))
    out = {k: {"mean_se": float(np.mean([s for _, s in v])), "sd_delta": float(np.std([d for d, _ in v], ddof=1)),
               "trials": len(v)} for k, v in found.items()}
    out |= {"images": args.images, "seconds": time.perf_counter() - t0, "load_avg_1min": os.getloadavg()[0]}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
