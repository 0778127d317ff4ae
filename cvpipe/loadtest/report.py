"""Load-test report parts: a statistics table and a latency-over-time plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cvpipe.loadtest.runner import PhaseResult  # noqa: E402
from cvpipe.reporting.html import table  # noqa: E402

COLUMNS = ["phase", "concurrency", "requests", "errors", "error_rate", "wall_s", "throughput_rps", "p50_ms", "p90_ms",
           "p95_ms", "p99_ms", "max_ms", "mean_ms"]


def stats_table(phases: list[PhaseResult]) -> str:
    return table([p.stats() for p in phases], COLUMNS)


def plot_latency(phases: list[PhaseResult], path: str | Path) -> Path:
    """One panel per phase: each request's latency at its start time (errors as red crosses)."""
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 3.8), squeeze=False)
    for ax, ph in zip(axes[0], phases):
        ok = [s for s in ph.samples if not s.error]
        bad = [s for s in ph.samples if s.error]
        ax.plot([s.start_s for s in ok], [s.latency_s * 1000 for s in ok], ".", ms=3, alpha=0.6, label="ok")
        if bad:
            ax.plot([s.start_s for s in bad], [s.latency_s * 1000 for s in bad], "x", color="red", label="error")
        st = ph.stats()
        if st["p95_ms"] is not None:
            ax.axhline(st["p95_ms"], color="gray", ls="--", lw=1, label=f"p95 {st['p95_ms']:.1f} ms")
        ax.set(xlabel="time since phase start (s)", ylabel="latency (ms)",
               title=f"{ph.name} (concurrency {ph.concurrency}): {st['throughput_rps']:.1f} req/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
