"""A real ArtifactStore (in tmp) holding model_pack runs of the BYO YOLOX-Nano ONNX:
A (score_thr 0.25, with its Bento), B (score_thr 0.5) and BAD (B's files with a reference.json that
its model does not reproduce). Run ids sort in that order, so "latest" is BAD."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from coco_data import ANNOTATIONS, NANO_ONNX, largest_person, need_data
from step_context import run_step, step_context

RUN_A, RUN_B, RUN_BAD = "20261124T100000000Z-aaaaaa", "20261124T110000000Z-bbbbbb", "20261124T120000000Z-cccccc"


def _pack(root: Path, run_id: str, score_thr: float, bento: bool, test_image: Path) -> dict:
    from cvpipe.steps.model_pack import ModelPackParams

    ctx = step_context(root / run_id, "model_pack", run_id=run_id)
    params = ModelPackParams(onnx=NANO_ONNX, class_names=ANNOTATIONS, test_image=test_image, score_thr=score_thr,
                             bento=bento, e2e=False)
    summary = run_step(ctx, params)
    return {"summary": summary, **ctx.outputs}


def _commit(store, run_id: str, dirs: dict, summary: dict) -> None:
    outs = {e: store.commit_entity("model_pack", run_id, e, dirs[e]) for e in ("model", "bento")}
    store.write_manifest({"run_id": run_id, "step": "model_pack", "status": "complete", "outputs": outs,
                          "summary": summary})


@pytest.fixture(scope="session")
def person_image() -> Path:
    """The COCO image with the largest person (many boxes: thresholds make a difference)."""
    need_data()
    return largest_person(json.loads(ANNOTATIONS.read_text()))[0]


def two_pack_store(root: Path, test_image: Path, bento_a: bool):
    """A store with two committed model_pack runs of the nano: A (score_thr 0.25, a .bento if asked) and B
    (0.5). Returns (store, A's dirs, B's dirs)."""
    need_data()
    from cvpipe.store import ArtifactStore

    store = ArtifactStore(str(root / "store"), env="test", pipeline="swap", cache_dir=root / "cache")
    a = _pack(root / "work", RUN_A, 0.25, bento_a, test_image)
    b = _pack(root / "work", RUN_B, 0.5, False, test_image)
    _commit(store, RUN_A, a, a["summary"])
    _commit(store, RUN_B, b, b["summary"])
    return store, a, b


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, person_image) -> dict:  # noqa: F811
    root = tmp_path_factory.mktemp("production")
    store, a, b = two_pack_store(root, person_image, bento_a=True)
    bad = {"model": root / "work" / "bad" / "model", "bento": b["bento"]}
    shutil.copytree(b["model"], bad["model"])
    ref = json.loads((bad["model"] / "reference.json").read_text())
    ref["detections"] = ref["detections"][1:]  # the model will find one box more than its "reference"
    (bad["model"] / "reference.json").write_text(json.dumps(ref))
    meta = json.loads((bad["model"] / "model.json").read_text())
    meta["run_id"] = RUN_BAD
    (bad["model"] / "model.json").write_text(json.dumps(meta))
    _commit(store, RUN_BAD, bad, {})
    bentos = sorted(Path(a["bento"]).glob("*.bento"))
    return {"store": store, "url": str(root / "store"), "env": "test", "pipeline": "swap", "bento": bentos[0],
            "a": a, "b": b, "root": root,
            "runs": {"a": RUN_A, "b": RUN_B, "bad": RUN_BAD}}
