"""Releases on a real `bentoml serve` under load (cvpipe's own load runner):

1. shadow cost: p50/p99 of /predict with no release vs a shadow release mirroring EVERY request (share 1.0),
   phases alternated `--rounds` times so both see the same machine load; prints the p99 ratio (target <= 1.2);
2. `--cycles` promote/rollback cycles while clients keep sending: canary (or shadow) releases of the other good
   model (promoted after 2 clean windows) and, every `--bad-every`th cycle, of a self-consistent degraded
   model (score_thr 0.99, its own reference), which must be rolled back automatically; counts non-2xx answers.

    .venv/bin/python benchmarks/bench_release.py --cycles 20 --out benchmarks/results/release.json   # ~6 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]
TOKEN = "bench-admin-token-0123456789"
RUN_A, RUN_B = "20261124T100000000Z-aaaaaa", "20261124T110000000Z-bbbbbb"
RUN_DEG = "20261124T120000000Z-d00001"


def make_store(root: Path, image: Path):
    """A store with A (champion, with its Bento), B (score_thr 0.5) and DEG (score_thr 0.99, own reference)."""
    from production.conftest import _commit, _pack, two_pack_store

    from cvpipe.store.promotion import PromotionLog

    store, a, _ = two_pack_store(root, image, bento_a=True)
    deg = _pack(root / "work", RUN_DEG, 0.99, False, image)
    _commit(store, RUN_DEG, deg, deg["summary"])
    PromotionLog(store).append("promote", RUN_A, run_id=RUN_A, reason="bench", forced=True)
    return store, sorted(Path(a["bento"]).glob("*.bento"))[0]


def admin(url: str, **body) -> dict:
    r = httpx.post(url + "/admin/release", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"{body.get('action')}: {r.status_code} {r.text}")
    return r.json()


def wait_end(url: str, timeout_s: float = 120) -> dict:
    """The ended release's status; one still running after `timeout_s` (inconclusive windows: the mirror thread
    got no CPU) is aborted and reported as such."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = admin(url, action="status")
        if not s["active"] and (s["last"] or {}).get("event_seq"):
            return s["last"]
        time.sleep(0.25)
    return {**admin(url, action="abort", reason="bench: no decision in time"), "state": "timed_out"}


def mirror_plan(name: str) -> dict:
    """A mirror policy's name -> the plan's fields: nice<N> (nice alone), idle (SCHED_IDLE, nice 19), `group`
    after either (a session and autogroup of its own: idlegroup is the default), and + `_cap<S>` (at most S of
    one core), e.g. idlegroup_cap0.25."""
    sched, *cap = name.split("_")
    group, sched = sched.endswith("group"), sched.removesuffix("group")
    plan = {"mirror_idle": sched == "idle", "mirror_own_group": group,
            "mirror_nice": 19 if sched == "idle" else int(sched.removeprefix("nice"))}
    return {**plan, "mirror_cpu_share": float(cap[0].removeprefix("cap"))} if cap else plan


def shadow_cost(url: str, req, rounds: int, seconds: float, concurrency: int, shares: list[float],
                mirrors: list[str]) -> dict:
    """Phases steady, shadow at each share and mirror policy, ... in a shuffled order each of `rounds` rounds;
    medians, and each round's ratio against the same round's steady phase (paired: both saw the same load)."""
    import os
    import random

    from cvpipe.loadtest.runner import run_phase

    variants = [(None, None)] + [(s, m) for s in shares for m in mirrors]
    kinds = ["steady" if s is None else f"shadow_{s}_{m}" for s, m in variants]
    phases: dict[str, list[dict]] = {k: [] for k in kinds}
    order = list(zip(kinds, variants))
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for kind, (share, mirror) in order:
            if share is not None:
                admin(url, action="start", run_id=RUN_B, plan={"mode": "shadow", "share": share, "window_s": 3600,
                                                               "auto_promote": False, **mirror_plan(mirror)})
            res = run_phase(url, req, name=kind, concurrency=concurrency, duration_s=seconds, max_requests=100000)
            st = {**res.stats(), "loadavg1": os.getloadavg()[0]}
            if share is not None:
                st["release"] = admin(url, action="status")["release"]["current"]
                admin(url, action="abort", reason="bench")
            phases[kind].append(st)
            print(f"round {r} {kind:<28} p50 {st['p50_ms']:6.1f} p99 {st['p99_ms']:6.1f} ms  compared "
                  f"{st.get('release', {}).get('compared', 0):4d} dropped {st.get('release', {}).get('dropped', 0):4d}"
                  f"  load {st['loadavg1']:.1f}", flush=True)
    med = {k: {m: statistics.median(p[m] for p in v) for m in ("p50_ms", "p99_ms", "throughput_rps")}
           for k, v in phases.items()}
    ratios = {k: {"p99": med[k]["p99_ms"] / med["steady"]["p99_ms"], "p50": med[k]["p50_ms"] / med["steady"]["p50_ms"]}
              for k in kinds[1:]}
    paired = {k: paired_ratios(phases[k], phases["steady"]) for k in kinds[1:]}
    return {"phases": phases, "median": med, "ratios": ratios, "paired_p99_ratio": paired,
            "compared": {k: sum(p["release"]["compared"] for p in phases[k]) for k in kinds[1:]},
            "errors": sum(p["errors"] for v in phases.values() for p in v)}


def paired_ratios(variant: list[dict], steady: list[dict]) -> dict:
    """Each round's p99 over the same round's steady p99: quartiles over the rounds."""
    r = sorted(v["p99_ms"] / n["p99_ms"] for v, n in zip(variant, steady))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return {"q1": round(q[0], 3), "median": round(q[1], 3), "q3": round(q[2], 3), "rounds": len(r)}


def cycles(url: str, req, n: int, bad_every: int, concurrency: int) -> dict:
    from cvpipe.loadtest.runner import run_phase

    stop = threading.Event()
    results: list = []

    def load():
        while not stop.is_set():
            results.append(run_phase(url, req, name="load", concurrency=concurrency, duration_s=5, max_requests=10**6))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    plan = {"window_s": 2.0, "min_samples": 5, "clean_windows": 2, "min_agreement": 0.5, "share": 0.5,
            "compare_share": 1.0, "max_latency_ratio": 5.0}
    champion, log = RUN_A, []
    try:
        for i in range(n):
            bad = (i + 1) % bad_every == 0
            challenger = RUN_DEG if bad else (RUN_B if champion == RUN_A else RUN_A)
            mode = "canary" if (i // 4) % 2 == 0 else "shadow"  # the bad cycles (every 4th) alternate too
            t0 = time.monotonic()
            admin(url, action="start", run_id=challenger, plan={**plan, "mode": mode})
            last = wait_end(url)
            took = time.monotonic() - t0
            windows = [w for w in last["windows"] if w["verdict"] != "inconclusive"]
            log.append({"cycle": i, "mode": mode, "challenger": challenger, "state": last["state"], "s": round(took, 1),
                        "windows": len(last["windows"]), "agreement": [w["agreement"] for w in windows]})
            print(log[-1], flush=True)
            if last["state"] == "promoted":
                champion = challenger
    finally:
        stop.set()
        thread.join(30)
    samples = [s for r in results for s in r.samples]
    non2xx = [s for s in samples if not 200 <= s.status < 300]
    regressed = [c for c in log if c["challenger"] == RUN_DEG]
    return {"cycles": log, "requests": len(samples), "non_2xx": len(non2xx),
            "non_2xx_examples": [s.error for s in non2xx[:5]],
            "regressed_rolled_back": sum(c["state"] == "rolled_back" for c in regressed), "regressed": len(regressed),
            "good_promoted": sum(c["state"] == "promoted" for c in log if c["challenger"] != RUN_DEG),
            "good": sum(c["challenger"] != RUN_DEG for c in log),
            "seconds_to_rollback": [c["s"] for c in regressed]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="per shadow-cost phase")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.1, 1.0], help="shadow shares to measure")
    ap.add_argument("--mirrors", nargs="+", default=["idlegroup"], help="mirror policies to measure: nice<N>, idle, "
                    "+group, + _cap<S> (e.g. nice19 idle idlegroup idlegroup_cap0.25)")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--bad-every", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from coco_data import ANNOTATIONS, largest_person

    from cvpipe.loadtest.runner import RequestSpec
    from cvpipe.serving.process import ServiceProcess

    image = largest_person(json.loads(ANNOTATIONS.read_text()))[0]
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        store, bento = make_store(Path(tmp), image)
        env = {"CVPIPE_FOLLOW_STORE": store.url, "CVPIPE_STORE_ENV": store.env,
               "CVPIPE_STORE_PIPELINE": store.pipeline, "CVPIPE_ADMIN_TOKEN": TOKEN,
               "CVPIPE_CACHE": str(store.cache_dir.parent)}
        req = RequestSpec(files={"image": ("t.jpg", image.read_bytes(), "image/jpeg")})
        with ServiceProcess(bento, env=env, bentoml_home=Path(tmp) / "home") as svc:
            from cvpipe.loadtest.runner import run_phase

            run_phase(svc.url, req, name="warmup", concurrency=1, duration_s=5, max_requests=20)
            cost = shadow_cost(svc.url, req, args.rounds, args.seconds, args.concurrency, args.shares, args.mirrors)
            print(json.dumps({k: cost[k] for k in ("median", "ratios", "paired_p99_ratio", "compared", "errors")}),
                  flush=True)
            cyc = cycles(svc.url, req, args.cycles, args.bad_every, args.concurrency) if args.cycles else {}
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    report = {"shadow_cost": cost, "cycles": cyc, "loadavg": loadavg}
    summary = {k: v for k, v in cyc.items() if k not in ("cycles", "non_2xx_examples")}
    print(json.dumps({"ratios": cost["ratios"], "paired_p99_ratio": cost["paired_p99_ratio"], **summary,
                      "loadavg": loadavg}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
