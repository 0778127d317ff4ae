from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from step_context import run_step, step_context

from cvpipe.pipeline import StepContext

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 3, "name": "dog", "supercategory": "animal"},
              {"id": 7, "name": "car", "supercategory": "vehicle"}]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A digest cache of the test's own (and no --rehash from the environment)."""
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CVPIPE_REHASH", raising=False)


@pytest.fixture
def copy_to_memory():
    """copy(folder, prefix) -> "memory://prefix": every file of the folder as an object-storage source
    without a server."""
    import fsspec

    def copy(folder: Path, prefix: str) -> str:
        fs = fsspec.filesystem("memory")
        for p in folder.rglob("*"):
            if p.is_file():
                fs.pipe(f"/{prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes())
        return f"memory://{prefix}"

    return copy


def make_image(path: Path, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture
def image_maker():
    return make_image


@pytest.fixture
def coco_dir(tmp_path) -> Path:
    """A small COCO dataset: 6 images, 3 classes, integer-pixel boxes, one negative image."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    boxes = {1: [(1, 10, 10, 20, 30), (3, 40, 5, 15, 15)], 2: [(7, 0, 0, 64, 32)], 3: [(1, 5, 5, 10, 10)],
             4: [(3, 20, 20, 30, 20), (7, 2, 3, 4, 5)], 5: [(1, 30, 20, 20, 20)], 6: []}
    for i in range(1, 7):
        w, h = 64 + 8 * i, 48
        make_image(root / "images" / f"img{i}.jpg", w, h, seed=i)
        images.append({"id": i, "file_name": f"img{i}.jpg", "width": w, "height": h, "license": 4})
        for cat, x, y, bw, bh in boxes[i]:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                       "categories": CATEGORIES}))
    return root


def make_ctx(tmp_path: Path, step: str) -> StepContext:
    """A fresh context for each call (runs of one test do not share folders)."""
    return step_context(tmp_path / f"run-{step}-{len(list(tmp_path.glob('run-*')))}", step)


@pytest.fixture
def run_load(tmp_path):
    from cvpipe.steps.data_load import DataLoadParams

    def run(source, **params):
        ctx = make_ctx(tmp_path, "data_load")
        params.setdefault("executor", "serial")
        summary = run_step(ctx, DataLoadParams(source=str(source), **params))
        return ctx, summary

    return run


@pytest.fixture
def run_prep(tmp_path):
    from cvpipe.steps.data_prep import DataPrepParams

    def run(load_ctx, **params):
        ctx = make_ctx(tmp_path, "data_prep")
        params.setdefault("executor", "serial")
        summary = run_step(ctx, DataPrepParams(**params), dataset=load_ctx.output("dataset"),
                           images=load_ctx.output("images"))
        return ctx, summary

    return run
