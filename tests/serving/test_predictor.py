import json

import numpy as np
import pytest

from cvpipe.inference.predictor import Predictor
from cvpipe.vision import decode_image


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def predictor(packed):
    return Predictor.from_dir(packed["model"])


def test_finds_the_person_in_a_coco_image(predictor, person_image):
    path, gt_boxes = person_image
    image = decode_image(path.read_bytes())
    det = predictor.predict(image)
    dets = predictor.to_json(det)
    persons = [d for d in dets if d["category_name"] == "person"]
    assert persons, f"no person found; got {dets}"
    best = max(max(iou(d["box"], g) for d in persons) for g in gt_boxes)
    assert best > 0.7, f"best person IoU with the ground truth is {best:.2f}"
    # contract of to_json: sorted by score, boxes inside the image, COCO ids
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    h, w = image.shape[:2]
    assert all(0 <= d["box"][0] < d["box"][2] <= w and 0 <= d["box"][1] < d["box"][3] <= h for d in dets)
    assert persons[0]["category_id"] == 1 and det.image_size == (h, w)


def test_batch_bytes_and_threshold_agree(predictor, person_image, coco):
    path = person_image[0]
    other = path.parent / sorted(i["file_name"] for i in coco["images"])[0]
    images = [decode_image(path.read_bytes()), decode_image(other.read_bytes())]
    batch = predictor.predict_batch(images)
    for im, b in zip(images, batch):
        single = predictor.predict(im)
        assert np.allclose(single.boxes, b.boxes, atol=1e-3) and np.array_equal(single.labels, b.labels)
    from_bytes = predictor.predict_bytes(path.read_bytes())
    assert np.allclose(from_bytes.boxes, batch[0].boxes, atol=1e-3)
    lower = predictor.predict(images[0], score_thr=0.05)
    assert len(lower) > len(batch[0])
    assert predictor.predict_batch([]) == []


def test_reference_json_is_the_predictors_output(packed, predictor):
    ref = json.loads((packed["model"] / "reference.json").read_text())
    image_path = next(packed["model"].glob("test_image.*"))
    image = decode_image(image_path.read_bytes())
    assert ref["detections"] == predictor.to_json(predictor.predict(image))
    assert ref["image"] == {"width": image.shape[1], "height": image.shape[0]}


def test_raw_onnx_with_wrong_class_count_is_refused(packed):
    with pytest.raises(ValueError, match="classes"):
        Predictor(packed["model"] / "model.onnx", ["a", "b"], None, (416, 416))
