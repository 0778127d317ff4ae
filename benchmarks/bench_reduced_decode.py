"""Reduced-size JPEG decode (the service's `reduced_decode`): time and peak memory of what a request costs before
the model runs (decode_image + letterbox, the service's DetectorEngine._prepare), full vs reduced, for a
12 Mpx (4000 x 3000) and a 24 Mpx (6000 x 4000) camera JPEG. Prints this run's numbers and reduced/full ratios.

The JPEGs are a bundled COCO photo upscaled to camera size plus Gaussian sensor-like noise (--noise, quality 90):
about 2 bits per pixel (a 3 MB 12 Mpx file), like a phone photo, so the entropy decoder, which a reduced decode
cannot skip, has its real share of the work. Per size and mode:
  decoded   : the array decode_image returned, and what the decode budget charges for it (decode_cost_bytes);
              a line says so when reduced_decode did not reduce (then every ratio is ~1)
  ms        : median wall time of decode + letterbox over --repeat runs in this process (one thread); full and
              reduced runs alternate, so a busy neighbour slows both alike
  traced MB : tracemalloc peak during one decode + letterbox (numpy/OpenCV arrays; not libjpeg's own buffers)
  rss MB    : growth of the peak RSS (ru_maxrss) of a forked child doing one decode + letterbox: everything

    .venv/bin/python benchmarks/bench_reduced_decode.py [--repeat 7] [--input 416] [--noise 5]

About 15 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from cvpipe.vision import decode_image, letterbox, read_header
from cvpipe.vision.images import DEFAULT_MAX_PIXELS, decode_cost_bytes

REPO = Path(__file__).resolve().parents[1]
SOURCE_IMAGE = REPO / "examples" / "coco_sample" / "images"
SIZES = {"12 Mpx": (3000, 4000), "24 Mpx": (4000, 6000)}  # (h, w)


def camera_jpeg(hw: tuple[int, int], noise_sigma: float, seed: int = 0) -> bytes:
    """A COCO photo upscaled to hw with Gaussian noise, JPEG quality 90."""
    source = decode_image(sorted(SOURCE_IMAGE.glob("*.jpg"))[0].read_bytes())
    big = cv2.resize(source, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed).normal(0, noise_sigma, big.shape).astype(np.int16)
    big = np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return simplejpeg.encode_jpeg(big, 90, colorspace="BGR")


def prepare(data: bytes, input_size: tuple[int, int], min_size: tuple[int, int] | None):
    """What DetectorEngine._prepare does: decode (reduced or not) and letterbox to the model input."""
    image = decode_image(data, DEFAULT_MAX_PIXELS, min_size)
    x, _ = letterbox(image, input_size)
    return image.shape[:2], x


def median_ms(data: bytes, input_size, min_sizes: dict, repeat: int) -> dict[str, float]:
    """Median ms per mode; the modes take turns, so drift in machine load affects all alike."""
    times = {mode: [] for mode in min_sizes}
    for _ in range(repeat):
        for mode, min_size in min_sizes.items():
            start = time.perf_counter()
            prepare(data, input_size, min_size)
            times[mode].append(time.perf_counter() - start)
    return {mode: 1000 * statistics.median(t) for mode, t in times.items()}


def traced_peak_mb(data: bytes, input_size, min_size) -> float:
    tracemalloc.start()
    try:
        prepare(data, input_size, min_size)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _rss_child(data: bytes, input_size, min_size, result) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prepare(data, input_size, min_size)
    result.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)  # KiB on Linux


def rss_growth_mb(data: bytes, input_size, min_size) -> float:
    """Peak RSS growth of a fresh forked process (the parent's allocator caches cannot hide it)."""
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_rss_child, args=(data, input_size, min_size, result))
    child.start()
    growth = result.get(timeout=120)
    child.join()
    return growth


def measure(data: bytes, input_size, repeat: int) -> dict[str, dict]:
    header = read_header(data)
    min_sizes = {"full": None, "reduced": input_size}
    ms = median_ms(data, input_size, min_sizes, repeat)
    return {mode: {"decoded": prepare(data, input_size, min_size)[0], "ms": ms[mode],
                   "charged_mb": decode_cost_bytes(header, min_size) / 2**20,
                   "traced_mb": traced_peak_mb(data, input_size, min_size),
                   "rss_mb": rss_growth_mb(data, input_size, min_size)} for mode, min_size in min_sizes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--input", type=int, default=416, help="model input side (YOLOX-Nano: 416)")
    parser.add_argument("--noise", type=float, default=5.0, help="noise sigma (grey levels): JPEG bits per pixel")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one request's work on one model thread, as the service does
    input_size = (args.input, args.input)
    print(f"decode_image + letterbox to {args.input}x{args.input}; median of {args.repeat}, one thread")
    print(f"{'image':8s} {'mode':8s} {'decoded':>11s} {'charged MB':>10s} {'ms':>8s} {'traced MB':>9s} "
          f"{'rss MB':>7s}")
    for name, hw in SIZES.items():
        data = camera_jpeg(hw, args.noise)
        prepare(data, input_size, None)  # warm: first-call costs are nobody's
        rows = measure(data, input_size, args.repeat)
        for mode, m in rows.items():
            decoded = "x".join(str(int(v)) for v in m["decoded"][::-1])
            print(f"{name:8s} {mode:8s} {decoded:>11s} {m['charged_mb']:10.1f} "
                  f"{m['ms']:8.1f} {m['traced_mb']:9.1f} {m['rss_mb']:7.1f}")
        full, reduced = rows["full"], rows["reduced"]
        print(f"{name:8s} reduced/full: time {reduced['ms'] / full['ms']:.3f}  traced memory "
              f"{reduced['traced_mb'] / full['traced_mb']:.3f}  rss growth "
              f"{reduced['rss_mb'] / max(full['rss_mb'], 1e-9):.3f}  ({len(data) / 2**20:.1f} MB JPEG, "
              f"{8 * len(data) / (hw[0] * hw[1]):.1f} bits/px)")
        if reduced["decoded"] == full["decoded"]:
            print(f"{name:8s} NOTE: reduced_decode decoded at full size, though the budget charges "
                  f"{reduced['charged_mb']:.1f} MB: the decoder did not scale")


if __name__ == "__main__":
    main()
