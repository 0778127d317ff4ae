"""Data steps throughput: images/s of data_load and data_prep, one process vs a process pool, on the
bundled COCO sample and on synthetic images. Prints ratios measured in this run.

    .venv/bin/python benchmarks/bench_data.py [--synthetic 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cvpipe.pipeline import StepContext
from cvpipe.steps.data_load import DataLoadParams, data_load
from cvpipe.steps.data_prep import DataPrepParams, data_prep

REPO = Path(__file__).resolve().parents[1]


def synthetic(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, n + 1):
        w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
        arr = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(arr).save(root / "images" / f"{i}.jpg", quality=85)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": arr.shape[1], "height": arr.shape[0]})
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


def measure(source: Path, executor: str, workers: int | None) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        lc = ctx(base, "data_load", ["dataset", "images"])
        t0 = time.perf_counter()
        n = data_load(DataLoadParams(source=str(source), executor=executor, workers=workers), lc)["images"]
        t1 = time.perf_counter()
        pc = ctx(base, "data_prep", ["dataset", "images", "report"])
        data_prep(DataPrepParams(executor=executor, workers=workers), pc, dataset=lc.output("dataset"),
                  images=lc.output("images"))
        t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"coco_sample": REPO / "examples" / "coco_sample",
                f"synthetic_{args.synthetic}": synthetic(Path(tmp) / "syn", args.synthetic)}
        print(f"{'dataset':<18} {'images':>6} {'executor':<10} {'load img/s':>10} {'prep img/s':>10} "
              f"{'load x':>7} {'prep x':>7}")
        for name, src in sets.items():
            base = None
            for executor, workers in (("serial", 1), ("process", 2)):
                load, prep, n = measure(src, executor, workers)
                base = base or (load, prep)
                print(f"{name:<18} {n:>6} {executor + f'x{workers}':<10} {load:>10.0f} {prep:>10.0f} "
                      f"{load / base[0]:>7.2f} {prep / base[1]:>7.2f}")


if __name__ == "__main__":
    main()
