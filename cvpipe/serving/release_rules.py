"""What a release decides, as plain functions of plain data (no HTTP, no models, no clock of its own):

- ReleasePlan: mode (shadow | canary), share, window length and the limits of the rules;
- routes_to_challenger: which canary requests the challenger answers (stable by a request key);
- WindowStats -> WindowFigures: one window's agreement, score drift, latencies and errors;
- decide: figures of a closed window + clean windows so far -> continue | promote | rollback, and why.

The running release (cvpipe.serving.release) feeds WindowStats from live traffic and acts on `decide`.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["shadow", "canary"]
Role = Literal["champion", "challenger"]


class ReleasePlan(BaseModel):
    """A release as the operator asks for it (`cvpipe release start`); validated before anything loads."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "shadow"
    share: float = Field(0.1, gt=0.0, le=1.0, description="shadow: share of requests mirrored to the challenger; "
                         "canary: share of request keys (or requests, without a key) the challenger answers")
    compare_share: float = Field(0.5, ge=0.0, le=1.0, description="canary: share of the challenger's answers "
                                 "also run on the champion, off the request path, to measure agreement")
    window_s: float = Field(60.0, ge=1.0, le=3600.0, description="length of a statistics window")
    clean_windows: int = Field(5, ge=1, le=1000, description="clean windows in a row that promote the challenger")
    min_samples: int = Field(10, ge=1, description="compared requests a window needs to count (else inconclusive)")
    min_agreement: float = Field(0.7, ge=0.0, le=1.0, description="lowest mean box-matching F1 (IoU 0.5)")
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0, description="highest share of challenger calls that fail")
    max_latency_ratio: float = Field(1.5, gt=0.0, description="highest challenger p95 / champion p95 latency")
    mirror_nice: int = Field(19, ge=0, le=19, description="nice value of the process that runs mirrored copies")
    mirror_idle: bool = Field(True, description="run the mirror process under SCHED_IDLE (Linux): only on a core "
                              "nothing else wants, preempted at once by a request")
    mirror_own_group: bool = Field(True, description="give the mirror process a session of its own (Linux "
                                   "autogroup at mirror_nice), so its CPU is not charged to the worker's share")
    mirror_cpu_share: float = Field(1.0, gt=0.0, le=1.0, description="most of one core the mirror process may "
                                    "use (a duty cycle: it pauses after each copy, copies that arrive meanwhile "
                                    "are dropped; 1.0: no cap)")
    queue_size: int = Field(16, ge=1, le=10000, description="mirrored requests waiting; more are dropped")
    auto_promote: bool = Field(True, description="promote after clean_windows; false: wait for `release promote`")


def routes_to_challenger(share: float, key: str | None, rng: random.Random | None = None) -> bool:
    """Canary routing. With a key (e.g. the X-Client-Id header) the answer depends only on the key and the
    share, so one client sees one model (and raising the share only moves clients to the challenger);
    without one, each request is drawn on its own."""
    if key:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share
    return (rng or random).random() < share


@dataclass
class WindowFigures:
    """A closed window: what the rules and the promotion log see."""

    index: int
    compared: int  # requests answered by both models (agreement measured)
    challenger_calls: int
    challenger_errors: int
    error_rate: float
    agreement: float | None  # mean box-matching F1; None without compared requests
    score_drift: float | None  # mean challenger detection score - mean champion detection score
    detections_ratio: float | None  # challenger detections / champion detections on compared requests
    champion_p95_ms: float | None
    challenger_p95_ms: float | None
    latency_ratio: float | None
    dropped: int  # mirrored requests dropped because the queue was full

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class WindowStats:
    """Observations of one window (appended by the running release; summarized once when it closes)."""

    index: int = 0
    f1: list[float] = field(default_factory=list)
    champion_scores: list[float] = field(default_factory=list)
    challenger_scores: list[float] = field(default_factory=list)
    champion_detections: int = 0
    challenger_detections: int = 0
    champion_ms: list[float] = field(default_factory=list)
    challenger_ms: list[float] = field(default_factory=list)
    challenger_calls: int = 0
    challenger_errors: int = 0
    dropped: int = 0

    def latency(self, role: Role, ms: float) -> None:
        (self.champion_ms if role == "champion" else self.challenger_ms).append(ms)

    def challenger_call(self, ok: bool) -> None:
        self.challenger_calls += 1
        self.challenger_errors += 0 if ok else 1

    def compared(self, f1: float, champion: list[dict], challenger: list[dict]) -> None:
        self.f1.append(f1)
        self.champion_scores += [float(d["score"]) for d in champion]
        self.challenger_scores += [float(d["score"]) for d in challenger]
        self.champion_detections += len(champion)
        self.challenger_detections += len(challenger)

    def figures(self) -> WindowFigures:
        ch95, cc95 = p95(self.champion_ms), p95(self.challenger_ms)
        calls = self.challenger_calls
        return WindowFigures(
            index=self.index, compared=len(self.f1), challenger_calls=calls, challenger_errors=self.challenger_errors,
            error_rate=self.challenger_errors / calls if calls else 0.0,
            agreement=sum(self.f1) / len(self.f1) if self.f1 else None,
            score_drift=(_mean(self.challenger_scores) - _mean(self.champion_scores)
                         if self.champion_scores and self.challenger_scores else None),
            detections_ratio=(self.challenger_detections / self.champion_detections
                              if self.champion_detections else None),
            champion_p95_ms=ch95, challenger_p95_ms=cc95,
            latency_ratio=cc95 / ch95 if ch95 and cc95 is not None else None, dropped=self.dropped)


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class Decision:
    action: Literal["continue", "promote", "rollback"]
    clean_windows: int  # clean windows in a row after this one
    verdict: Literal["clean", "failed", "inconclusive"]
    reasons: tuple[str, ...] = ()


def breaches(f: WindowFigures, plan: ReleasePlan) -> list[str]:
    """The limits a window crossed. Error rate counts as soon as the challenger was called min_samples times;
    agreement needs min_samples compared requests; latency needs min_samples calls of each model."""
    out = []
    if f.challenger_calls >= plan.min_samples and f.error_rate > plan.max_error_rate:
        out.append(f"error rate {f.error_rate:.3f} > {plan.max_error_rate} ({f.challenger_errors} of "
                   f"{f.challenger_calls} challenger calls failed)")
    if f.compared >= plan.min_samples and f.agreement is not None and f.agreement < plan.min_agreement:
        out.append(f"agreement (box F1) {f.agreement:.3f} < {plan.min_agreement} on {f.compared} requests")
    if f.latency_ratio is not None and f.challenger_calls >= plan.min_samples and \
            f.latency_ratio > plan.max_latency_ratio:
        out.append(f"challenger p95 latency {f.challenger_p95_ms:.1f} ms is {f.latency_ratio:.2f}x the "
                   f"champion's {f.champion_p95_ms:.1f} ms (limit {plan.max_latency_ratio}x)")
    return out


def decide(f: WindowFigures, plan: ReleasePlan, clean_so_far: int) -> Decision:
    """One closed window -> what the release does. Any breached limit rolls back at once; a window with
    too few compared requests or challenger calls is inconclusive (it neither counts nor resets the run of
    clean windows); `clean_windows` clean windows in a row promote (when auto_promote)."""
    failed = breaches(f, plan)
    if failed:
        return Decision("rollback", 0, "failed", tuple(failed))
    if f.compared < plan.min_samples or f.challenger_calls < plan.min_samples:
        return Decision("continue", clean_so_far, "inconclusive",
                        (f"{f.compared} compared requests, {f.challenger_calls} challenger calls "
                         f"(fewer than {plan.min_samples})",))
    clean = clean_so_far + 1
    if plan.auto_promote and clean >= plan.clean_windows:
        return Decision("promote", clean, "clean", (f"{clean} clean windows in a row",))
    return Decision("continue", clean, "clean")
