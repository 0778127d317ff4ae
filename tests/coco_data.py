"""Where the tests find real data: the bundled COCO sample (examples/coco_sample) and the shipped YOLOX-Nano
ONNX, the same on every machine, so that every threshold and every number quoted in a test holds everywhere.

Another COCO folder of the same layout (annotations.json + images/) is used only when asked for, by setting
CVPIPE_TEST_COCO, e.g. `CVPIPE_TEST_COCO=../shared/data/coco_real/dev pytest` (docs/testing.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NANO_ONNX = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
BUNDLED_COCO = REPO / "examples" / "coco_sample"
COCO_DEV = Path(os.environ["CVPIPE_TEST_COCO"]).resolve() if os.environ.get("CVPIPE_TEST_COCO") else BUNDLED_COCO
ANNOTATIONS = COCO_DEV / "annotations.json"


def need_data() -> None:
    """Fail when the model or the sample is missing: both are part of the clone, so their absence is a broken
    checkout (or a wrong CVPIPE_TEST_COCO), never a reason to skip."""
    missing = [str(p) for p in (NANO_ONNX, ANNOTATIONS) if not p.is_file()]
    if missing:
        pytest.fail(f"test data missing: {', '.join(missing)} (see docs/testing.md)")


def largest_person(coco: dict) -> tuple[Path, list[list[float]]]:
    """The COCO image with the largest person, and its person boxes (xyxy)."""
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == 1 and not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    best = max(by_image, key=lambda i: max(a["area"] for a in by_image[i]))
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in by_image[best])]
    return COCO_DEV / "images" / files[best], boxes
