"""Where the data steps' memory goes: run data_load + data_prep in this process and sample, every --every
seconds, the RSS split into glibc's heap in use and freed-but-kept (mallinfo2), Python's allocated blocks
(thousands) and Arrow's pool, with the innermost cvpipe frame of the main thread. Linux (glibc) only.

    .venv/bin/python benchmarks/memory_timeline.py config.yaml --every 0.5

The config is a cvpipe config whose data_load source is the data to measure (a scale set from
make_scale_data.py); give it an empty store and CVPIPE_CACHE for a first version."""

from __future__ import annotations

import argparse
import ctypes
import io
import os
import sys
import threading
import time


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _sample(libc, pa) -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) // 1024
    info = libc.mallinfo2()
    out.update(blocks_k=sys.getallocatedblocks() // 1000, heap_used=info.uordblks >> 20,
               heap_free=info.fordblks >> 20, arrow=pa.total_allocated_bytes() >> 20)
    return out


def _where(thread_id: int) -> str:
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if "cvpipe" in frame.f_code.co_filename:
            return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between printed samples")
    args = ap.parse_args()
    import pyarrow as pa
    from rich.console import Console

    from cvpipe.config import load_config
    from cvpipe.pipeline.runner import Runner

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    main_id, samples, done = threading.main_thread().ident or 0, [], threading.Event()

    def sampler() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), _sample(libc, pa), _where(main_id)))
            time.sleep(0.1)

    threading.Thread(target=sampler, daemon=True).start()
    runner = Runner(load_config(args.config), console=Console(file=io.StringIO()))
    t0 = time.perf_counter()
    for name in ("data_load", "data_prep"):
        runner.run_step(name)
        print(f"{name} done at {time.perf_counter() - t0:.1f} s: {_sample(libc, pa)}")
    done.set()
    last = -1e9
    for t, s, where in samples:
        if t - last >= args.every:
            print(f"{t - t0:7.1f} s " + " ".join(f"{k} {v:5d}" for k, v in s.items()) + f"  {where}")
            last = t
    peak = max(samples, key=lambda s: s[1]["VmRSS"])
    print(f"peak at {peak[0] - t0:.1f} s: {peak[1]} {peak[2]}")


if __name__ == "__main__":
    main()
