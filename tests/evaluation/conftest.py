from __future__ import annotations

import json

import pytest
from coco_data import need_data

from .helpers import DEV, nano_detections


@pytest.fixture(scope="session")
def dev_gt() -> dict:
    p = DEV / "annotations.json"
    need_data()
    return json.loads(p.read_text())


@pytest.fixture(scope="session")
def crowd_image_ids(dev_gt) -> list[int]:
    return sorted({a["image_id"] for a in dev_gt["annotations"] if a["iscrowd"]})


@pytest.fixture(scope="session")
def nano_dets_subset(dev_gt, crowd_image_ids):
    """Nano detections on 24 dev images (8 of them with crowd regions) and the GT restricted to them."""
    need_data()
    plain = [i["id"] for i in dev_gt["images"] if i["id"] not in set(crowd_image_ids)]
    ids = sorted(crowd_image_ids[:8] + plain[:16])
    sub = {**dev_gt, "images": [i for i in dev_gt["images"] if i["id"] in set(ids)],
           "annotations": [a for a in dev_gt["annotations"] if a["image_id"] in set(ids)]}
    return sub, nano_detections(dev_gt, ids)
