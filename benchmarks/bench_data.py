"""Data steps throughput: images/s of data_load and data_prep, one process vs a process pool, on the
bundled COCO sample and on synthetic images. Prints what this run measured, and pool/serial ratios.

Two views per dataset and executor (best of --repeat runs, since the machine may be shared):
  step  : the whole step function (data_prep includes its fixed-cost report: plots, sample grid)
  phase : only the per-image work the pool spreads (data_load: hash + header + store; data_prep: decode)
Then the integrity costs: the source digest data_load's cache keys on (sha256 of every file) and the
verification of stored files when a run is materialised, as files/s beside a whole data_load.

    .venv/bin/python benchmarks/bench_data.py [--synthetic 2000] [--repeat 3] [--workers 2]

At scale (`--scale DIR`, a data set written by benchmarks/make_scale_data.py): data_load + data_prep through
the runner, five rows, each in a fresh process (its wall time, the steps' own time, peak RSS of the main
process and of the largest worker; CPU seconds of the process and its workers, which a loaded machine
inflates less than the wall time): first version (empty store and digest cache), no-change rerun, one image
changed, one annotation changed, 1 % of images added. DIR is never modified: the rows work on a hard-linked
copy of it and change files only by replacing them (a new inode), so the original stays as generated.

    .venv/bin/python benchmarks/bench_data.py --scale /tmp/cvpipe-scale/10k
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cvpipe.data.load import normalise, read_raw
from cvpipe.data.validate import ValidationPolicy, validate
from cvpipe.pipeline import StepContext
from cvpipe.pipeline.runner import invoke
from cvpipe.pipeline.step import get_step
from cvpipe.steps.data_load import DataLoadParams
from cvpipe.steps.data_prep import DataPrepParams

REPO = Path(__file__).resolve().parents[1]


def synthetic(root: Path, n: int) -> Path:
    """n photo-sized JPEGs (smooth gradients plus noise, 480-640 px) with 0..5 boxes each, as COCO."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, n + 1):
        w, h = int(rng.integers(480, 641)), int(rng.integers(360, 481))
        yy, xx = np.mgrid[0:h, 0:w]
        base = (np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1) + rng.normal(0, 12, (h, w, 3)))
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for _ in range(int(rng.integers(0, 6))):
            x, y = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 11)),
                         "bbox": [x, y, 40.0, 30.0], "area": 1200.0, "iscrowd": 0})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 11)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def ctx(base: Path, step: str, outputs: list[str]) -> StepContext:
    c = StepContext(step, "bench", {o: base / step / o for o in outputs}, base / step / "scratch")
    for p in [*c.outputs.values(), c.scratch]:
        p.mkdir(parents=True)
    return c


def measure_steps(source: Path, executor: str, workers: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        lc = ctx(base, "data_load", ["dataset", "images"])
        t0 = time.perf_counter()
        n = invoke(get_step("data_load"), DataLoadParams(source=str(source), executor=executor, workers=workers),
                   lc, {})["images"]
        t1 = time.perf_counter()
        pc = ctx(base, "data_prep", ["dataset", "images", "report"])
        invoke(get_step("data_prep"), DataPrepParams(executor=executor, workers=workers), pc,
               {"dataset": lc.output("dataset"), "images": lc.output("images")})
        t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1), n


def measure_phases(source: Path, executor: str, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = read_raw(source)
        t0 = time.perf_counter()
        ds, _ = normalise(raw, Path(tmp), executor, workers)
        t1 = time.perf_counter()
        validate(ds, Path(tmp).joinpath, ValidationPolicy(), set(), executor, workers)
        t2 = time.perf_counter()
    return len(ds.images) / (t1 - t0), len(ds.images) / (t2 - t1)


def measure_integrity(source: Path) -> tuple[float, float, float]:
    """images/s of the source digest (every file's sha256, what data_load's cache keys on), of a whole
    data_load (hash, header, store) for comparison, and of verifying the stored images on materialise."""
    from cvpipe.data.sources import digest_source
    from cvpipe.store.digests import REHASH_ENV
    from cvpipe.store.hashing import file_digest, list_files
    from cvpipe.store.store import verify_directory

    with tempfile.TemporaryDirectory() as tmp:
        os.environ[REHASH_ENV] = "1"  # the full cost: every byte read (unchanged files are free otherwise)
        t0 = time.perf_counter()
        n = digest_source(str(source)).files
        t1 = time.perf_counter()
        del os.environ[REHASH_ENV]
        lc = ctx(Path(tmp), "data_load", ["dataset", "images"])
        images = invoke(get_step("data_load"), DataLoadParams(source=str(source), executor="serial"), lc, {})["images"]
        t2 = time.perf_counter()
        out = lc.output("images")
        index = {rel: file_digest(out / rel) for rel in list_files(out)}
        t3 = time.perf_counter()
        verify_directory(out, index, "images", rehash=True)
        t4 = time.perf_counter()
    return n / (t1 - t0), images / (t2 - t1), len(index) / (t4 - t3)


def best(fn, repeat: int, *args):
    runs = [fn(*args) for _ in range(repeat)]
    return tuple(max(r[i] for r in runs) for i in range(len(runs[0])))


# ---- at scale: the five rows of issue 26 ---------------------------------------------------------------
SCALE_STEPS = ("data_load", "data_prep")


def scale_row(config: Path) -> None:
    """(child process) Run data_load and data_prep once; print their times and peak memory as JSON."""
    import io
    import resource

    from rich.console import Console

    from cvpipe.config import load_config
    from cvpipe.pipeline.runner import Runner

    runner = Runner(load_config(config), console=Console(file=io.StringIO()))
    times, reused = {}, []
    for name in SCALE_STEPS:
        t = time.perf_counter()
        before = {r.run_id for r in runner.store.list_runs(name)}
        rec = runner.run_step(name)
        times[name] = round(time.perf_counter() - t, 2)
        if rec.run_id in before:
            reused.append(name)
    mb = 1024  # ru_maxrss is in KiB on Linux
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    print(json.dumps({**times, "reused": reused, "cpu_s": round(cpu, 2),
                      "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // mb,
                      "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // mb}))


def _link_copy(src: Path, dest: Path) -> None:
    for p in src.rglob("*"):
        if p.is_file():
            (dest / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            os.link(p, dest / p.relative_to(src))


def _replace(path: Path, data: bytes) -> None:
    """Write by replacing (a new inode): the hard-linked original is never touched."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _change_one_image(work: Path) -> str:
    import cv2

    path = min((work / "images").rglob("*.jpg"))
    img = cv2.imread(str(path))
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    img[0, 0] = 255 - img[0, 0]
    _replace(path, cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return path.relative_to(work).as_posix()


def _change_one_annotation(work: Path) -> str:
    coco = json.loads((work / "annotations.json").read_text())
    ann = coco["annotations"][0]
    ann["bbox"][0] += 1.0
    _replace(work / "annotations.json", json.dumps(coco).encode())
    return f"annotation {ann['id']}"


def _add_one_percent(work: Path) -> str:
    from make_scale_data import generate

    coco = json.loads((work / "annotations.json").read_text())
    n = max(1, len(coco["images"]) // 100)
    first = max(im["id"] for im in coco["images"]) + 1
    added = generate(n, work, seed=1, first_id=first)
    top = max(a["id"] for a in coco["annotations"]) + 1
    for k, a in enumerate(added["annotations"]):
        a["id"] = top + k
    coco["images"] += added["images"]
    coco["annotations"] += added["annotations"]
    _replace(work / "annotations.json", json.dumps(coco).encode())
    return f"{n} images"


def scale_rows(data: Path, workers: int) -> None:
    import shutil
    import subprocess
    import sys

    if not (data / "annotations.json").is_file() or not (data / "images").is_dir():
        raise SystemExit(f"{data}: not a generated scale set (annotations.json + images/); make one with "
                         "benchmarks/make_scale_data.py")
    base = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=data.parent))
    work = base / "data"
    _link_copy(data, work)
    config = base / "config.yaml"
    step = {"executor": "process", "workers": workers}
    config.write_text(json.dumps({"store": str(base / "store"), "env": "bench", "pipeline": "scale",
                                  "data_load": {"source": str(work), **step}, "data_prep": step}))
    env = {**os.environ, "CVPIPE_CACHE": str(base / "cache"), "PYTHONPATH": str(REPO)}
    rows = [("first version", None), ("no-change rerun", None), ("one image changed", _change_one_image),
            ("one annotation changed", _change_one_annotation), ("1 % images added", _add_one_percent)]
    print(f"{data}: {len(list((data / 'images').rglob('*.jpg')))} images; {os.cpu_count()} CPUs; workers {workers}")
    print(f"{'row':<24} {'wall s':>7} {'cpu s':>7} {'load s':>7} {'prep s':>7} {'RSS MB':>7} {'worker':>7} "
          f"{'load avg':>8}  change")
    try:
        for name, change in rows:
            what = change(work) if change else ""
            t = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--scale-row", str(config)], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"row {name!r} failed:\n{done.stderr[-3000:]}")
            wall = time.perf_counter() - t
            r = json.loads(done.stdout.strip().splitlines()[-1])
            what += f" (reused: {', '.join(r['reused'])})" if r["reused"] else ""
            print(f"{name:<24} {wall:>7.1f} {r['cpu_s']:>7.1f} {r['data_load']:>7.1f} {r['data_prep']:>7.1f} "
                  f"{r['rss_main_mb']:>7} {r['rss_worker_mb']:>7} {os.getloadavg()[0]:>8.1f}  {what}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scale", type=Path, help="the five at-scale rows on this data set (make_scale_data.py)")
    ap.add_argument("--scale-row", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_row:
        return scale_row(args.scale_row)
    if args.scale:
        return scale_rows(args.scale.resolve(), args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sets = {"coco_sample": REPO / "examples" / "coco_sample",
                f"synthetic_{args.synthetic}": synthetic(Path(tmp) / "syn", args.synthetic)}
        print(f"(synthetic data generated in {time.perf_counter() - t:.1f} s; best of {args.repeat} runs; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start)")
        print(f"{'dataset':<16} {'images':>6} {'executor':<10} {'load':>7} {'prep':>7} {'hash':>7} {'decode':>7}"
              f"   (images/s; x = pool / serial)")
        for name, src in sets.items():
            base = None
            for executor, workers in (("serial", 1), ("process", args.workers)):
                load, prep, n = best(measure_steps, args.repeat, src, executor, workers)
                hashing, decoding = best(measure_phases, args.repeat, src, executor, workers)
                row = (load, prep, hashing, decoding)
                base = base or row
                print(f"{name:<16} {n:>6} {executor + f'x{workers}':<10} " + " ".join(f"{v:>7.0f}" for v in row))
                if executor != "serial":
                    print(f"{'':<16} {'':>6} {'x':<10} " + " ".join(f"{v / b:>7.2f}" for v, b in zip(row, base)))
        print(f"{'dataset':<16} {'digest':>8} {'load':>8} {'verify':>8}   (files/s, serial; digest / load)")
        for name, src in sets.items():
            digest, load, verify = best(measure_integrity, args.repeat, src)
            print(f"{name:<16} {digest:>8.0f} {load:>8.0f} {verify:>8.0f}   x{load / digest:.2f} of load time")
        print(f"(load average {os.getloadavg()[0]:.1f} at the end: other work on the machine lowers the pool's gain)")


if __name__ == "__main__":
    main()
