"""YOLOX model benchmark on this machine's CPU.

Forward latency per scale and input size (eval mode, as built and BN-fused), FLOPs, achieved GFLOP/s against
the CPU's measured peak (the faster of a large float32 matmul and a large 3x3 conv,
timed in the same run), and training-step throughput.

    .venv/bin/python benchmarks/bench_model.py                      # nano, tiny, s at 416 and 640
    .venv/bin/python benchmarks/bench_model.py --scales nano --sizes 416 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from cvpipe.models.yolox import build_yolox, fuse_model
from cvpipe.models.yolox.flops import count_flops


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-case dense float32 throughput: an n x n x n matmul, 2 n^3 FLOPs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_seconds(lambda: a @ b, repeats, warmup=2)
    return 2 * n**3 / t / 1e9


def conv_peak_gflops(channels: int = 256, hw: int = 80, repeats: int = 5) -> float:
    """Dense 3x3 conv throughput (oneDNN), which on some CPUs beats the BLAS matmul."""
    x, w = torch.randn(1, channels, hw, hw), torch.randn(channels, channels, 3, 3)
    with torch.no_grad():
        t = median_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats, warmup=2)
    return 2 * channels * channels * 9 * hw * hw / t / 1e9


def forward_rows(scales, sizes, repeats, peak):
    rows = []
    for scale in scales:
        model = build_yolox(scale).eval()
        fused = fuse_model(model)
        for size in sizes:
            x = torch.rand(1, 3, size, size) * 255
            flops = count_flops(model, size)
            with torch.no_grad():
                t = median_seconds(lambda model=model, x=x: model(x), repeats)
                tf = median_seconds(lambda fused=fused, x=x: fused(x), repeats)
            gflops = flops / 1e9
            rows.append({"scale": scale, "size": size, "gflops": gflops, "latency_ms": t * 1e3,
                         "fused_latency_ms": tf * 1e3, "achieved_gflops_s": gflops / tf,
                         "fraction_of_peak": gflops / tf / peak})
    return rows


def train_rows(scales, size, batch, steps):
    rows = []
    for scale in scales:
        torch.manual_seed(0)
        model = build_yolox(scale, 80).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.rand(batch, 3, size, size) * 255
        targets = torch.zeros(batch, 4, 5)
        targets[:, :, 0] = torch.randint(0, 80, (batch, 4)).float()
        targets[:, :, 1:3] = torch.rand(batch, 4, 2) * size * 0.6 + size * 0.2
        targets[:, :, 3:5] = torch.rand(batch, 4, 2) * size * 0.3 + 16

        def step(model=model, opt=opt, images=images, targets=targets):
            loss = model(images, targets)["total_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = median_seconds(step, steps)
        flops = count_flops(model, size, batch)
        rows.append({"scale": scale, "size": size, "batch": batch, "step_s": t, "images_per_s": batch / t,
                     "approx_train_gflops_s": 3 * flops / 1e9 / t})  # fwd + bwd ~ 3x forward FLOPs
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", nargs="+", default=["nano", "tiny", "s"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[416, 640])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--train-scales", nargs="+", default=["nano", "s"])
    ap.add_argument("--train-size", type=int, default=416)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    console = Console()
    mm_peak, conv_peak = matmul_peak_gflops(), conv_peak_gflops()
    peak = max(mm_peak, conv_peak)
    console.print(f"[bold]CPU[/bold] {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads; measured peak {peak:.1f} GFLOP/s = max(matmul 2048^3 "
                  f"{mm_peak:.1f}, conv3x3 256ch 80x80 {conv_peak:.1f}) float32")
    fwd = forward_rows(args.scales, args.sizes, args.repeats, peak)
    table = Table(title="YOLOX forward, batch 1 (median)")
    for col in ["scale", "size", "GFLOPs", "latency ms", "fused ms", "GFLOP/s (fused)", "% of peak"]:
        table.add_column(col, justify="right")
    for r in fwd:
        table.add_row(r["scale"], str(r["size"]), f"{r['gflops']:.2f}", f"{r['latency_ms']:.1f}",
                      f"{r['fused_latency_ms']:.1f}", f"{r['achieved_gflops_s']:.1f}",
                      f"{100 * r['fraction_of_peak']:.0f}%")
    console.print(table)

    tr = train_rows(args.train_scales, args.train_size, args.train_batch, args.train_steps)
    table = Table(title=f"YOLOX training step (SGD, batch {args.train_batch}, {args.train_size}px, median)")
    for col in ["scale", "step s", "images/s", "~GFLOP/s (3x fwd)", "% of peak"]:
        table.add_column(col, justify="right")
    for r in tr:
        table.add_row(r["scale"], f"{r['step_s']:.2f}", f"{r['images_per_s']:.2f}",
                      f"{r['approx_train_gflops_s']:.1f}", f"{100 * r['approx_train_gflops_s'] / peak:.0f}%")
    console.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "peak_gflops_s": peak, "matmul_gflops_s": mm_peak,
                       "conv_gflops_s": conv_peak, "forward": fwd,
                       "train": tr}, f, indent=2)


if __name__ == "__main__":
    main()
