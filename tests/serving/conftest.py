"""Shared fixtures: one BYO pack of Megvii's YOLOX-Nano ONNX (model dir + .bento) per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coco_data import ANNOTATIONS, NANO_ONNX, largest_person, need_data  # noqa: F401 - NANO_ONNX for tests
from step_context import run_step, step_context


@pytest.fixture(scope="session")
def coco() -> dict:
    need_data()
    return json.loads(ANNOTATIONS.read_text())


@pytest.fixture(scope="session")
def person_image(coco) -> tuple[Path, list[list[float]]]:
    """A COCO image with a large person, and its person boxes (xyxy)."""
    return largest_person(coco)


@pytest.fixture(scope="session")
def packed(tmp_path_factory, person_image) -> dict:
    """The model_pack step run on the BYO nano ONNX: {"summary", "model", "bento", "run_id"}."""
    from cvpipe.steps.model_pack import ModelPackParams

    root = tmp_path_factory.mktemp("packed")
    ctx = step_context(root, "model_pack", run_id="20261124-test-pack")
    params = ModelPackParams(onnx=NANO_ONNX, class_names=ANNOTATIONS, test_image=person_image[0])
    summary = run_step(ctx, params)
    return {"summary": summary, "model": ctx.output("model"), "bento": ctx.output("bento"), "run_id": ctx.run_id}
