"""Where the tests find real data: the shared COCO dev folder beside the checkout when it is there, else the
bundled sample (same layout), and the shipped YOLOX-Nano ONNX."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NANO_ONNX = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
COCO_DEV = REPO.parent / "shared" / "data" / "coco_real" / "dev"
if not COCO_DEV.is_dir():
    COCO_DEV = REPO / "examples" / "coco_sample"
ANNOTATIONS = COCO_DEV / "annotations.json"


def need_data() -> None:
    """Skip where the bundled data is missing on a developer's partial checkout; fail in CI, where the
    bundled model and sample are part of the clone and their absence is a bug."""
    missing = [str(p.relative_to(REPO)) for p in (NANO_ONNX, ANNOTATIONS) if not p.is_file()]
    if missing:
        message = f"bundled test data missing: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


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
