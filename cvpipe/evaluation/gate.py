"""The promotion gate: a non-inferiority test on the paired bootstrap of the AP difference.

The burden of proof lies with the candidate. It is promoted only when the lower bound of the two-sided
`confidence` interval of AP(candidate) - AP(champion) is at least -margin (the convention of non-inferiority
trials: a 95 % two-sided interval, so a candidate exactly `margin` worse passes at most 2.5 % of the time).
When it fails that, the test set decides between two answers:

- refused: the test set is large enough (the smallest regression it detects at `power` is <= margin), or the
  whole interval lies below -margin; the candidate is worse than the champion allows.
- held: not enough evidence. The interval is too wide for any verdict; the record says how many images would
  make it decisive. Never a silent pass: `when_undecided: promote` (a demo with 15 test images) promotes and
  says so in the record.

The detectable regression ("minimum detectable effect") is (z_conf + z_power) * se, se the bootstrap standard
error of the difference: an equal candidate then passes with probability `power`. Its error rates, measured on
real detections with independent errors, are in docs/promotion.md (benchmarks/bench_gate_power.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist
from typing import Any, Literal

Verdict = Literal["promoted", "refused", "held"]


@dataclass(frozen=True)
class GateRule:
    """What the candidate must show. AP values are 0..1 (0.01 = 1 AP point)."""

    margin: float = 0.01
    confidence: float = 0.95
    power: float = 0.8
    when_undecided: Literal["hold", "promote"] = "hold"
    ap50_margin: float | None = None  # the same non-inferiority test on AP50
    min_class_ap: dict[str, float] = field(default_factory=dict)  # class name -> the candidate's AP floor
    max_latency_ms: float | None = None  # the candidate's p95 model time per image in model_eval


def detectable_regression(se: float, confidence: float, power: float) -> float:
    """The drop (AP) this test set tells from 'equal' at `power`: (z_conf + z_power) * se."""
    z = NormalDist().inv_cdf
    return (z(1 - (1 - confidence) / 2) + z(power)) * se


def images_needed(images: int, se: float, rule: GateRule) -> int:
    """Images for which the detectable regression shrinks to the margin (se falls as 1 / sqrt(images))."""
    ratio = detectable_regression(se, rule.confidence, rule.power) / rule.margin
    return max(images, math.ceil(images * ratio * ratio))


def _ap_verdict(ci: list[float], se: float, images: int, rule: GateRule, margin: float,
                what: str) -> tuple[Verdict, str]:
    lo, hi = ci
    mde = detectable_regression(se, rule.confidence, rule.power)
    if lo >= -margin:
        return "promoted", f"{what}: lower bound {lo:+.4f} >= -{margin:g}: not worse by more than the margin"
    if hi < -margin:
        return "refused", f"{what}: the whole interval lies below -{margin:g}: worse by more than the margin"
    if mde <= margin:
        return "refused", (f"{what}: lower bound {lo:+.4f} < -{margin:g}, and this test set detects a drop of "
                           f"{mde:.4f} at {rule.power:.0%} power: a regression beyond the margin is not ruled out")
    need = images_needed(images, se, replace(rule, margin=margin))
    return "held", (f"{what}: not enough evidence: lower bound {lo:+.4f} < -{margin:g}, but {images} images detect "
                    f"only drops of {mde:.4f} or more at {rule.power:.0%} power; about {need} images are needed")


def gate_decision(boot: dict | None, rule: GateRule, reference: str | None,
                  candidate_per_class_ap: dict[str, float] | None = None, latency_ms_p95: float | None = None,
                  more: list[dict] | tuple[dict, ...] = ()) -> dict:
    """The decision record: verdict, each criterion with its reason, and the numbers behind them. `more`:
    criteria decided elsewhere ({"name", "verdict", "reason"}, e.g. leakage_criterion)."""
    criteria = [] if boot is None else [_criterion("AP", *_ap_verdict(boot["ci"], boot["std"], boot["images"],
                                                                        rule, rule.margin, "AP"))]
    if boot is not None and rule.ap50_margin is not None:
        a = boot["ap50"]
        criteria.append(_criterion("AP50", *_ap_verdict(a["ci"], a["std"], boot["images"], rule,
                                                        rule.ap50_margin, "AP50")))
    criteria += _extra_criteria(rule, candidate_per_class_ap or {}, latency_ms_p95) + list(more)
    verdict = _combine([c["verdict"] for c in criteria])
    forced = verdict == "held" and rule.when_undecided == "promote"
    failed = "; ".join(c["reason"] for c in criteria if c["verdict"] != "promoted")
    record: dict[str, Any] = {"passed": verdict == "promoted" or forced, "verdict": "promoted" if forced else verdict,
              "undecided_promoted": forced, "reference": reference, "rule": asdict(rule), "criteria": criteria}
    if boot is None:
        head = "no reference model to compare with"
    else:
        mde = detectable_regression(boot["std"], rule.confidence, rule.power)
        lo, hi = boot["ci"]
        head = (f"AP {boot['candidate_ap']:.4f} vs {reference} {boot['reference_ap']:.4f}: difference "
                f"{boot['delta']:+.4f}, {rule.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}] over "
                f"{boot['images']} images, margin {rule.margin:g}, detectable drop {mde:.4f} at "
                f"{rule.power:.0%} power")
        record.update(margin=rule.margin, interval=[lo, hi], delta=boot["delta"], detectable_drop=mde,
                      images_needed=images_needed(boot["images"], boot["std"], rule), p_better=boot["p_better"])
    if forced:
        record["message"] = f"{head}: PROMOTED WITHOUT ENOUGH EVIDENCE (when_undecided: promote): {failed}"
    else:
        record["message"] = f"{head}: {verdict}" + (f": {failed}" if failed else "")
    return record


def _criterion(name: str, verdict: Verdict, reason: str) -> dict:
    return {"name": name, "verdict": verdict, "reason": reason}


def _extra_criteria(rule: GateRule, per_class: dict[str, float], latency_ms: float | None) -> list[dict]:
    out = []
    for name, floor in sorted(rule.min_class_ap.items()):
        ap = per_class.get(name)
        ok = ap is not None and ap >= floor
        shown = "no ground truth" if ap is None or ap < 0 else f"{ap:.4f}"
        out.append(_criterion(f"AP[{name}]", "promoted" if ok else "refused",
                              f"AP of {name} {shown} {'>=' if ok else 'below the floor'} {floor:g}"))
    if rule.max_latency_ms is not None:
        ok = latency_ms is not None and latency_ms <= rule.max_latency_ms
        out.append(_criterion("latency", "promoted" if ok else "refused",
                              f"p95 model time {latency_ms if latency_ms is not None else float('nan'):.1f} ms "
                              f"{'<=' if ok else '>'} budget {rule.max_latency_ms:g} ms"))
    return out


def _combine(verdicts: list[Verdict]) -> Verdict:
    """Any refusal refuses; else any undecided criterion holds; else promoted."""
    if "refused" in verdicts:
        return "refused"
    return "held" if "held" in verdicts else "promoted"
