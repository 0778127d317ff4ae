"""Latency statistics of a load-test phase."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def latency_stats(latencies_s, wall_s: float, errors: int = 0) -> dict:
    """Requests, errors, throughput and latency percentiles (ms, linear interpolation) of one phase.

    latencies_s: every request's latency (errors included: a slow failure is still slow);
    wall_s: the phase's wall-clock time, for the throughput.
    """
    lat = np.asarray(list(latencies_s), dtype=float) * 1000.0
    n = int(lat.size)
    out: dict[str, float | None] = {"requests": n, "errors": int(errors), "error_rate": (errors / n) if n else 0.0,
           "wall_s": float(wall_s), "throughput_rps": (n / wall_s) if wall_s > 0 else 0.0,
           "ok_rps": ((n - errors) / wall_s) if wall_s > 0 else 0.0}
    if n:
        out.update({f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, np.percentile(lat, PERCENTILES))})
        out.update({"mean_ms": float(lat.mean()), "min_ms": float(lat.min()), "max_ms": float(lat.max())})
    else:
        out.update({f"p{p}_ms": None for p in PERCENTILES})
        out.update({"mean_ms": None, "min_ms": None, "max_ms": None})
    return out
