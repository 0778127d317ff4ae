"""Where a shadow mirror's cost to the champion comes from (issue 27): the champion's in-process latency while a
second copy of the model runs continuously beside it, as a thread of the same process (shares the GIL) or as a
child process (cvpipe.serving.mirror.MirrorProcess: its own GIL), under a scheduling policy and CPU cap.
"mirror ran" counts the copies the mirror finished in a phase (more: fewer inconclusive windows).

Variants (`--variants`): thread_nice<N>; process_nice<N> (nice alone); process_idle (SCHED_IDLE, nice 19);
`group` after either: a session and autogroup of its own (process_idlegroup: the service's default); any process
variant + `_cap<S>` (at most S of one core, a duty cycle, e.g. process_idlegroup_cap0.25).

The champion is `--concurrency` threads calling DetectorEngine.predict_sync_timed in a closed loop (what the
service's model threads do) or, with `--rps`, serving Poisson arrivals (latency from arrival); the mirror is kept
busy all the time (the worst case: every request copied, its queue always full). Two designs:

- rounds (default): each variant's phase, in a shuffled order, `--rounds` times; medians of the rounds and each
  round's p99 over the same round's no-mirror p99 (quartiles);
- interleaved (`--minutes`, process variants): every mirror started once and fed in turn for `--phase-s`
  seconds, for that long; latencies pooled per variant and a block-bootstrap 90 % interval of the p99 ratio.
  On a shared machine whose load comes and goes this is the comparison to trust: every variant samples the
  same minutes.

    .venv/bin/python benchmarks/bench_mirror.py --rounds 3 --seconds 8        # ~3 min
    .venv/bin/python benchmarks/bench_mirror.py --minutes 12 --phase-s 2 --rps 20 \
        --variants process_nice19 process_idle process_idle_cap0.5 process_idle_cap0.25
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]


def champion_phase(engine, data: bytes, concurrency: int, seconds: float, rps: float | None = None) -> dict:
    """Closed loop (`rps` None: each thread calls again at once) or open loop (Poisson arrivals at `rps`, served
    by `concurrency` threads; a request's latency counts from its arrival, so waiting for a thread is in it)."""
    from cvpipe.loadtest.stats import latency_stats

    return latency_stats(*phase_latencies(engine, data, concurrency, seconds, rps))


def phase_latencies(engine, data: bytes, concurrency: int, seconds: float,
                    rps: float | None = None) -> tuple[list[float], float]:
    """Every request's latency (s) and the phase's wall time."""
    if rps:
        return open_loop_phase(engine, data, concurrency, seconds, rps)
    lat: list[float] = []
    deadline = time.perf_counter() + seconds

    def worker():
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            engine.predict_sync_timed(data)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: worker(), range(concurrency)))
    return lat, time.perf_counter() - t0


def open_loop_phase(engine, data: bytes, concurrency: int, seconds: float, rps: float) -> tuple[list[float], float]:
    rng, lat = random.Random(), []

    def one(arrival: float) -> None:
        engine.predict_sync_timed(data)
        lat.append(time.perf_counter() - arrival)

    t0 = time.perf_counter()
    arrival = t0
    with ThreadPoolExecutor(concurrency) as pool:
        while (arrival := arrival + rng.expovariate(rps)) < t0 + seconds:
            time.sleep(max(0.0, arrival - time.perf_counter()))
            pool.submit(one, arrival)
    return lat, time.perf_counter() - t0


class CpuMeter:
    """The machine's busy cores over an interval (/proc/stat) and, of those, what `pids` (this benchmark and its
    mirror) used: the rest is the other work on the machine, reported beside each phase."""

    def __init__(self):
        self.total0, self.idle0, self.mine0 = self._machine() + (self._mine(),)

    @staticmethod
    def _machine() -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        return sum(v[:8]) / tick, (v[3] + v[4]) / tick

    @staticmethod
    def _mine() -> float:
        from bench_serving import tree_cpu_s

        return tree_cpu_s(os.getpid())

    def others_cores(self, wall_s: float) -> float:
        total, idle = self._machine()
        busy = (total - self.total0) - (idle - self.idle0)
        return max(0.0, (busy - (self._mine() - self.mine0)) / wall_s)


def wait_until_quiet(max_others: float, timeout_s: float) -> float:
    """Wait (up to timeout_s) until other work on the machine used at most `max_others` cores over 2 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        meter = CpuMeter()
        time.sleep(2.0)
        others = meter.others_cores(2.0)
        if others <= max_others or time.monotonic() > deadline:
            return others


class ThreadMirror:
    """The mirror as it was: a thread of this process at `nice` running the second engine back to back."""

    def __init__(self, engine, data: bytes, nice: int):
        self.engine, self.data, self.nice = engine, data, nice
        self.stop, self.done = threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)  # this thread only (Linux)
        while not self.stop.is_set():
            self.engine.predict_sync_timed(self.data)
            self.done += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


class ProcessMirror:
    """The mirror as it is: cvpipe.serving.mirror.MirrorProcess, its queue kept full by a feeder thread."""

    def __init__(self, model_dir: Path, data: bytes, policy):
        from cvpipe.serving.mirror import MirrorProcess
        from cvpipe.serving.settings import ServiceSettings

        self.sink = MirrorProcess(model_dir, ServiceSettings(), policy, queue_size=4)
        self.data, self.stop, self.done = data, threading.Event(), 0
        self.active = threading.Event()  # interleaved runs: fed only while active (idle: blocked, costs nothing)
        self.active.set()
        self.feeder = threading.Thread(target=self._feed, daemon=True)

    def _feed(self):
        seq = 0
        while not self.stop.is_set():
            while self.active.is_set() and self.sink.submit(seq, self.data, None):
                seq += 1
            if self.sink.next_result(0.05) is not None:
                self.done += 1

    def __enter__(self):
        import psutil

        self.sink.start()
        self.child = psutil.Process(self.sink.process.pid)
        self.feeder.start()
        return self

    def cpu_s(self) -> float:
        """CPU seconds the child has used so far (all its threads)."""
        t = self.child.cpu_times()
        return t.user + t.system

    def __exit__(self, *exc):
        self.stop.set()
        self.feeder.join()
        self.sink.close()


def interleaved(champion, data: bytes, model_dir: Path, names: list[str], args) -> dict:
    """Every mirror started once, idle; then blocks of short phases (no mirror, each mirror fed in turn, in a
    shuffled order) for `args.minutes`: all variants sample the same stretches of machine load. Latencies are
    pooled per variant; the p99 ratio's 90 % interval comes from resampling whole blocks, and the quartiles of
    each block's own ratio are robust to a block the machine stalled in (it slows every variant of that block)."""
    import contextlib

    import numpy as np

    mirrors = {n: mirror_of(n, None, model_dir, data)() for n in names}
    kinds = ["none", *names]
    blocks: list[dict[str, list[float]]] = []
    done = {k: 0 for k in kinds}
    with contextlib.ExitStack() as stack:
        for m in mirrors.values():
            stack.enter_context(m)
            m.active.clear()
        time.sleep(1.0)
        deadline = time.monotonic() + args.minutes * 60
        rng = random.Random(0)
        while time.monotonic() < deadline:
            block: dict[str, list[float]] = {}
            for name in rng.sample(kinds, len(kinds)):
                m = mirrors.get(name)
                if m is not None:
                    m.active.set()
                    time.sleep(0.2)  # its queue is full, it is running
                    done0 = m.done
                block[name], _ = phase_latencies(champion, data, args.concurrency, args.phase_s, args.rps)
                if m is not None:
                    m.active.clear()
                    done[name] += m.done - done0
                    time.sleep(0.2)  # the copy in progress ends before the next phase
            blocks.append(block)
            print(f"block {len(blocks)}: " + "  ".join(f"{k} p99 {1000 * np.percentile(v, 99):.0f}"
                                                       for k, v in block.items()) + f"  load {os.getloadavg()[0]:.1f}",
                  flush=True)

    def p99(kind: str, picks) -> float:
        return float(np.percentile(np.concatenate([blocks[i][kind] for i in picks]), 99))

    every = range(len(blocks))
    gen = np.random.default_rng(0)
    boots = [gen.integers(0, len(blocks), len(blocks)) for _ in range(1000)]
    out = {"blocks": len(blocks), "phase_s": args.phase_s, "rps": args.rps, "concurrency": args.concurrency}
    for k in kinds:
        lat = np.concatenate([b[k] for b in blocks]) * 1000
        out[k] = {"requests": int(lat.size), "p50_ms": float(np.percentile(lat, 50)),
                  "p99_ms": float(np.percentile(lat, 99)), "mirror_done": done[k]}
        if k != "none":
            ratios = [p99(k, b) / p99("none", b) for b in boots]
            per_block = [np.percentile(b[k], 99) / np.percentile(b["none"], 99) for b in blocks]
            out[k] |= {"p99_ratio": p99(k, every) / p99("none", every),
                       "p99_ratio_90ci": [float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))],
                       "block_p99_ratio_quartiles": [float(q) for q in np.percentile(per_block, [25, 50, 75])]}
    out["block_p99_ms"] = [{k: round(1000 * float(np.percentile(v, 99)), 1) for k, v in b.items()} for b in blocks]
    return out


def mirror_of(name: str, engine, model_dir: Path, data: bytes):
    """A variant's name -> a function that makes its mirror (see the module's docstring)."""
    from cvpipe.serving.mirror import MirrorPolicy

    kind, sched, *cap = name.split("_")
    if kind == "thread":
        return lambda: ThreadMirror(engine, data, int(sched.removeprefix("nice")))
    group = sched.endswith("group")
    sched = sched.removesuffix("group")
    nice = 19 if sched == "idle" else int(sched.removeprefix("nice"))
    share = float(cap[0].removeprefix("cap")) if cap else 1.0
    policy = MirrorPolicy(nice=nice, sched_idle=sched == "idle", cpu_share=share, own_group=group)
    return lambda: ProcessMirror(model_dir, data, policy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["process_nice19", "process_idle", "process_idle_cap0.25"])
    ap.add_argument("--rps", type=float, help="open loop: Poisson arrivals at this rate (default: closed loop)")
    ap.add_argument("--quiet", type=float, help="before each round, wait until other work uses at most this many "
                    "cores (the shared machine's load comes and goes)")
    ap.add_argument("--quiet-timeout", type=float, default=120.0)
    ap.add_argument("--minutes", type=float, help="interleaved: short phases of every variant, in turn, for this long "
                    "(process variants only; pooled latencies, block-bootstrap interval)")
    ap.add_argument("--phase-s", type=float, default=2.0, help="interleaved: seconds per phase")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from bench_slow_clients import pack
    from coco_data import ANNOTATIONS, largest_person

    from cvpipe.serving.engine import DetectorEngine
    from cvpipe.serving.settings import ServiceSettings

    data = largest_person(json.loads(ANNOTATIONS.read_text()))[0].read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as tmp:
        model_dir, _ = pack(Path(tmp))
        champion = DetectorEngine(model_dir, ServiceSettings())
        second = DetectorEngine(model_dir, ServiceSettings())
        for _ in range(5):
            champion.predict_sync_timed(data)
            second.predict_sync_timed(data)
        if args.minutes:
            res = {**interleaved(champion, data, model_dir, args.variants, args), "loadavg": os.getloadavg()}
            print(json.dumps(res, indent=1))
            if args.out:
                args.out.write_text(json.dumps(res, indent=1))
            return
        variants = {"none": None, **{name: mirror_of(name, second, model_dir, data) for name in args.variants}}
        phases: dict[str, list[dict]] = {k: [] for k in variants}
        order = list(variants)
        for r in range(args.rounds):
            random.Random(r).shuffle(order)  # no variant always runs right after another
            if args.quiet is not None:
                print(f"round {r}: others used {wait_until_quiet(args.quiet, args.quiet_timeout):.2f} cores before it",
                      flush=True)
            for name in order:
                make = variants[name]
                meter = CpuMeter()
                if make is None:
                    st = champion_phase(champion, data, args.concurrency, args.seconds, args.rps)
                    done, cpu = 0, 0.0
                else:
                    with make() as m:
                        time.sleep(0.5)  # the mirror is busy before the phase starts
                        meter = CpuMeter()
                        cpu0, done0 = getattr(m, "cpu_s", lambda: 0.0)(), m.done
                        st = champion_phase(champion, data, args.concurrency, args.seconds, args.rps)
                        done, cpu = m.done - done0, getattr(m, "cpu_s", lambda: 0.0)() - cpu0
                        others = meter.others_cores(st["wall_s"])  # while the mirror is still a child of ours
                if make is None:
                    others = meter.others_cores(st["wall_s"])
                phases[name].append({**st, "mirror_done": done, "mirror_cpu_share": cpu / args.seconds,
                                     "loadavg1": os.getloadavg()[0], "others_cores": others})
                print(f"round {r} {name:<22} p50 {st['p50_ms']:6.1f} p99 {st['p99_ms']:6.1f} ms "
                      f"{st['throughput_rps']:6.1f} req/s  mirror ran {done:4d} ({cpu / args.seconds:.2f} core)  "
                      f"load {os.getloadavg()[0]:.1f}, others {others:.2f} cores", flush=True)
    med = {k: {m: statistics.median(p[m] for p in v)
               for m in ("p50_ms", "p99_ms", "throughput_rps", "mirror_done", "mirror_cpu_share", "loadavg1",
                         "others_cores")}
           for k, v in phases.items()}
    ratios = {k: round(med[k]["p99_ms"] / med["none"]["p99_ms"], 3) for k in variants if k != "none"}
    paired = {k: paired_ratios(phases[k], phases["none"]) for k in variants if k != "none"}
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    print(json.dumps({"median": med, "p99_ratio": ratios, "paired_p99_ratio": paired, "loadavg": loadavg}, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"phases": phases, "median": med, "p99_ratio": ratios,
                                        "paired_p99_ratio": paired, "loadavg": loadavg}, indent=1))


def paired_ratios(variant: list[dict], none: list[dict]) -> dict:
    """Each round's p99 over the same round's no-mirror p99 (both saw about the same machine load): quartiles."""
    r = sorted(v["p99_ms"] / n["p99_ms"] for v, n in zip(variant, none))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return {"q1": round(q[0], 3), "median": round(q[1], 3), "q3": round(q[2], 3), "rounds": len(r)}


if __name__ == "__main__":
    main()
