"""Where a shadow mirror's cost to the champion comes from (issue 27): the champion's in-process latency while a
second copy of the model runs continuously beside it, as a thread of the same process (shares the GIL) or as a
child process (cvpipe.serving.mirror.MirrorProcess: its own GIL), each at nice 19 and at nice 0. "mirror ran"
counts the copies the mirror finished in a phase (more: fewer inconclusive windows).

The champion is `--concurrency` threads calling DetectorEngine.predict_sync_timed in a closed loop (what the
service's model threads do); the mirror is kept busy all the time (the worst case: every request copied and
the copies never dropped). Phases are alternated `--rounds` times so every variant sees the same machine load;
medians of the rounds are printed with the p99 ratio against no mirror.

    .venv/bin/python benchmarks/bench_mirror.py --rounds 3 --seconds 8        # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]


def champion_phase(engine, data: bytes, concurrency: int, seconds: float) -> dict:
    from cvpipe.loadtest.stats import latency_stats

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
    return latency_stats(lat, time.perf_counter() - t0)


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

    def __init__(self, model_dir: Path, data: bytes, nice: int):
        from cvpipe.serving.mirror import MirrorProcess
        from cvpipe.serving.settings import ServiceSettings

        self.sink = MirrorProcess(model_dir, ServiceSettings(), nice=nice, queue_size=4)
        self.data, self.stop, self.done = data, threading.Event(), 0
        self.feeder = threading.Thread(target=self._feed, daemon=True)

    def _feed(self):
        seq = 0
        while not self.stop.is_set():
            while self.sink.submit(seq, self.data, None):
                seq += 1
            if self.sink.next_result(0.05) is not None:
                self.done += 1

    def __enter__(self):
        self.sink.start()
        self.feeder.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.feeder.join()
        self.sink.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["thread_nice19", "process_nice19", "thread_nice0",
                                                      "process_nice0"])
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
        variants = {"none": None,
                    "thread_nice19": lambda: ThreadMirror(second, data, 19),
                    "process_nice19": lambda: ProcessMirror(model_dir, data, 19),
                    "thread_nice0": lambda: ThreadMirror(second, data, 0),
                    "process_nice0": lambda: ProcessMirror(model_dir, data, 0)}
        variants = {k: v for k, v in variants.items() if k == "none" or k in args.variants}
        phases: dict[str, list[dict]] = {k: [] for k in variants}
        for r in range(args.rounds):
            for name, make in variants.items():
                if make is None:
                    st, done = champion_phase(champion, data, args.concurrency, args.seconds), 0
                else:
                    with make() as m:
                        time.sleep(0.5)  # the mirror is busy before the phase starts
                        st = champion_phase(champion, data, args.concurrency, args.seconds)
                        done = m.done
                phases[name].append({**st, "mirror_done": done})
                print(f"round {r} {name:<15} p50 {st['p50_ms']:6.1f} p99 {st['p99_ms']:6.1f} ms "
                      f"{st['throughput_rps']:6.1f} req/s  mirror ran {done}", flush=True)
    med = {k: {m: statistics.median(p[m] for p in v) for m in ("p50_ms", "p99_ms", "throughput_rps", "mirror_done")}
           for k, v in phases.items()}
    ratios = {k: round(med[k]["p99_ms"] / med["none"]["p99_ms"], 3) for k in variants if k != "none"}
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    print(json.dumps({"median": med, "p99_ratio": ratios, "loadavg": loadavg}, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"phases": phases, "median": med, "p99_ratio": ratios, "loadavg": loadavg},
                                       indent=1))


if __name__ == "__main__":
    main()
