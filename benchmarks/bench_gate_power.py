"""The promotion gate's error rates, measured: how often it promotes, holds and refuses a candidate whose true AP
is `drop` below the champion's, on test sets of 100, 500 and 5,000 images, over many independent trials.

Detections: Megvii's YOLOX-Nano ONNX on the real COCO dev images (366, ../shared/data/coco_real/dev; or the
bundled 104-image sample with --data examples/coco_sample), matched once; each trial draws a test set from them
and two models with independent errors (cvpipe.evaluation.power: per-detection score noise and misses), the
candidate's miss rate calibrated to the drop. With --pair, two real checkpoints instead (their detections on the
same held-out images, benchmarks/make_pair_detections.py): each trial draws a test set and takes both models'
own detections on it; a drop adds calibrated misses to the real candidate. The gate is model_eval's
(cvpipe.evaluation.gate, defaults: margin 0.01, 95 % two-sided interval, power 0.8) with --resamples paired
resamples per trial.

    .venv/bin/python benchmarks/bench_gate_power.py --cache nano_dev.json --json power.json   # 200/200/50 trials
    .venv/bin/python benchmarks/bench_gate_power.py --plot docs/img/gate_power.png --from power.json
    .venv/bin/python benchmarks/bench_gate_power.py --pair pairs/s0.json pairs/s1.json --pair-gt pairs/gt.json \
        --sigma 0 --base-miss 0 --sizes 100 500 --trials 200 200 --json pair.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cvpipe.evaluation.gate import GateRule
from cvpipe.evaluation.power import Pool, miss_for_drop, trial_verdicts

REPO = Path(__file__).resolve().parents[1]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a rate measured as k of n."""
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def load_pool(data: Path, onnx: Path, cache: Path | None) -> Pool:
    gt = json.loads((data / "annotations.json").read_text())
    if cache is not None and cache.is_file():
        dets = json.loads(cache.read_text())
    else:
        from bench_eval import nano_detections

        dets = nano_detections(gt, data / "images", onnx, threads=2)
        if cache is not None:
            cache.write_text(json.dumps(dets))
    return Pool.from_detections(gt, dets)


def load_pair(gt_path: Path, champion: Path, candidate: Path) -> tuple[Pool, Pool]:
    """Two real models' detections on the same images (make_pair_detections.py), each matched once."""
    gt = json.loads(gt_path.read_text())
    return (Pool.from_detections(gt, json.loads(champion.read_text())),
            Pool.from_detections(gt, json.loads(candidate.read_text())))


def run(args: argparse.Namespace) -> list[dict]:
    rule = GateRule(margin=args.margin)
    candidate_pool = None
    if args.pair:
        pool, candidate_pool = load_pair(args.pair_gt, *args.pair)
        misses = {d: miss_for_drop(candidate_pool, d, args.base_miss, args.sigma) for d in args.drops}
    else:
        pool = load_pool(args.data, args.onnx, args.cache)
        misses = {d: miss_for_drop(pool, d, args.base_miss, args.sigma) for d in args.drops}
    rows = []
    for size, trials in zip(args.sizes, args.trials):
        for drop in args.drops:
            t0 = time.perf_counter()
            c = trial_verdicts(pool, size, misses[drop], rule, trials, seed=size * 1000 + round(drop * 1e4),
                               base_miss=args.base_miss, sigma=args.sigma, resamples=args.resamples,
                               candidate_pool=candidate_pool)
            rows.append({"images": size, "drop": drop, "candidate_miss": misses[drop], "trials": trials, **c,
                         "seconds_per_trial": (time.perf_counter() - t0) / trials})
            show(rows[-1:])
            if args.json:
                args.json.write_text(json.dumps({"rows": rows, "args": _args(args)}, indent=2))
    return rows


def _args(args: argparse.Namespace) -> dict:
    return json.loads(json.dumps(vars(args), default=str))


def show(rows: list[dict]) -> None:
    table = Table(title_justify="left")
    for col in ("images", "true drop", "trials", "promoted", "blocked (95% CI)", "held", "refused", "mean se",
                "sd of delta", "mean delta", "percentile: promoted"):
        table.add_column(col, justify="right")
    for r in rows:
        blocked = r["held"] + r["refused"]
        lo, hi = wilson(blocked, r["trials"])
        table.add_row(str(r["images"]), f"{r['drop']:.3f}", str(r["trials"]), f"{r['promoted'] / r['trials']:.0%}",
                      f"{blocked / r['trials']:.0%} ({lo:.0%}-{hi:.0%})", str(r["held"]), str(r["refused"]),
                      f"{r['mean_se']:.4f}", f"{r.get('sd_delta', float('nan')):.4f}",
                      f"{r.get('mean_delta', float('nan')):+.4f}",
                      f"{r['percentile_promoted'] / r['trials']:.0%}" if "percentile_promoted" in r else "")
    Console().print(table)


def plot(rows: list[dict], out: Path, margin: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for size in sorted({r["images"] for r in rows}):
        pts = sorted((r["drop"] * 100, r["promoted"] / r["trials"]) for r in rows if r["images"] == size)
        ax.plot(*zip(*pts), marker="o", label=f"{size} test images")
    ax.axvline(margin * 100, color="grey", ls="--", lw=1)
    ax.text(margin * 100, 0.5, " margin", color="grey")
    ax.set_xlabel("true AP drop of the candidate (AP points)")
    ax.set_ylabel("share of trials promoted")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Promotion gate: non-inferiority at a 1-point margin")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/coco_real/dev")
    ap.add_argument("--onnx", type=Path, default=REPO / "weights/yolox_nano/yolox_nano.onnx")
    ap.add_argument("--cache", type=Path, help="detections JSON (made when missing)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 5000])
    ap.add_argument("--trials", type=int, nargs="+", default=[200, 200, 50], help="per size")
    ap.add_argument("--drops", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02])
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--sigma", type=float, default=0.2, help="score noise of each model (log scale)")
    ap.add_argument("--base-miss", type=float, default=0.03, help="the champion's miss rate")
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--pair", type=Path, nargs=2, metavar=("CHAMPION", "CANDIDATE"),
                    help="real-pair mode: two real models' detections (make_pair_detections.py) instead of simulated "
                         "errors; use with --sigma 0 --base-miss 0. A drop adds misses to the real candidate")
    ap.add_argument("--pair-gt", type=Path, help="the ground truth of --pair (make_pair_detections.py's gt.json)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="draw the power curve (from --from, or from this run)")
    ap.add_argument("--from", dest="from_", type=Path, nargs="+", help="JSON files of earlier runs to plot")
    args = ap.parse_args()
    if args.from_:
        rows = [r for f in args.from_ for r in json.loads(f.read_text())["rows"]]
        show(rows)
    else:
        rows = run(args)
    if args.plot:
        plot(rows, args.plot, args.margin)


if __name__ == "__main__":
    main()
