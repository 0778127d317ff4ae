"""Shared fixtures: one BYO pack of Megvii's YOLOX-Nano ONNX (model dir + .bento) per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NANO_ONNX = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
COCO_DEV = REPO.parent / "shared" / "data" / "coco_real" / "dev"
if not COCO_DEV.is_dir():  # the bundled sample has the same layout
    COCO_DEV = REPO / "examples" / "coco_sample"
ANNOTATIONS = COCO_DEV / "annotations.json"


def _need_data():
    if not NANO_ONNX.is_file() or not ANNOTATIONS.is_file():
        pytest.skip("needs weights/yolox_nano/yolox_nano.onnx and the COCO dev sample")


@pytest.fixture(scope="session")
def coco() -> dict:
    _need_data()
    return json.loads(ANNOTATIONS.read_text())


@pytest.fixture(scope="session")
def person_image(coco) -> tuple[Path, list[list[float]]]:
    """A COCO image with a large person, and its person boxes (xyxy)."""
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == 1 and not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    best = max(by_image, key=lambda i: max(a["area"] for a in by_image[i]))
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in by_image[best])]
    return COCO_DEV / "images" / files[best], boxes


@pytest.fixture(scope="session")
def packed(tmp_path_factory, person_image) -> dict:
    """The model_pack step run on the BYO nano ONNX: {"summary", "model", "bento", "run_id"}."""
    from cvpipe.pipeline import StepContext
    from cvpipe.steps.model_pack import ModelPackParams, model_pack

    root = tmp_path_factory.mktemp("packed")
    outputs = {"model": root / "model", "bento": root / "bento"}
    for d in [*outputs.values(), root / "scratch"]:
        d.mkdir()
    ctx = StepContext(step="model_pack", run_id="20261124-test-pack", outputs=outputs, scratch=root / "scratch")
    params = ModelPackParams(onnx=NANO_ONNX, class_names=ANNOTATIONS, test_image=person_image[0])
    summary = model_pack(params, ctx)
    return {"summary": summary, "model": outputs["model"], "bento": outputs["bento"], "run_id": ctx.run_id}
