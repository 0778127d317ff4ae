"""Where the tests find real data: the shared COCO dev folder beside the checkout when it is there, else the
bundled sample (same layout), and the shipped YOLOX-Nano ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NANO_ONNX = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"
COCO_DEV = REPO.parent / "shared" / "data" / "coco_real" / "dev"
if not COCO_DEV.is_dir():
    COCO_DEV = REPO / "examples" / "coco_sample"
ANNOTATIONS = COCO_DEV / "annotations.json"


def need_data() -> None:
    if not NANO_ONNX.is_file() or not ANNOTATIONS.is_file():
        pytest.skip("needs weights/yolox_nano/yolox_nano.onnx and COCO images")


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
