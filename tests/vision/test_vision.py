"""The vision core: EXIF orientation, letterbox, box formats, IoU, ClassMap, COCO results; and an EXIF-rotated
photo through the packed-model predictor gives boxes in the displayed orientation."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from coco_data import ANNOTATIONS, NANO_ONNX, largest_person, need_data
from PIL import Image, ImageOps

from cvpipe.vision import (
    ClassMap,
    Detections,
    box_iou,
    cxcywh_to_xyxy,
    decode_image,
    detections_to_coco,
    letterbox,
    read_header,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def encode(rgb: np.ndarray, fmt: str, orientation: int | None = None) -> bytes:
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = im.getexif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_viewers_do(orientation):
    rgb = np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    data = encode(rgb, "PNG", orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[..., ::-1]
    got = decode_image(data)
    assert np.array_equal(got, expected)
    header = read_header(data)
    assert (header.height, header.width) == got.shape[:2] and header.orientation == orientation


def test_jpeg_through_libjpeg_turbo_equals_pillow_and_corrupt_is_an_error():
    rgb = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    data = encode(rgb, "JPEG")
    assert np.array_equal(decode_image(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1])
    from cvpipe.vision import ImageDecodeError

    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_letterbox_resizes_bilinear_into_the_top_left_corner():
    img = np.random.default_rng(1).integers(0, 255, (200, 100, 3), dtype=np.uint8)
    chw, r = letterbox(img, (160, 160))
    assert r == pytest.approx(0.8)
    expected = cv2.resize(img, (80, 160), interpolation=cv2.INTER_LINEAR)  # Megvii's and mmdetection's resize
    assert np.array_equal(chw.transpose(1, 2, 0)[:160, :80].astype(np.uint8), expected)
    assert (chw[:, :, 80:] == 114).all() and chw.dtype == np.float32


def test_box_formats_round_trip_and_iou():
    xyxy = np.array([[10, 20, 50, 80], [0, 0, 10, 10]], np.float32)
    assert np.allclose(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)
    assert np.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)
    assert np.allclose(xyxy_to_xywh(xyxy)[0], [10, 20, 40, 60])
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    assert np.allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


def test_class_map_ids_labels_names_and_subsets():
    coco = ClassMap.from_coco_categories([{"id": 3, "name": "car"}, {"id": 1, "name": "person"},
                                          {"id": 90, "name": "toothbrush"}])
    assert coco.names == ("person", "car", "toothbrush") and coco.category_ids == (1, 3, 90)
    assert coco.label_of[90] == 2 and coco.category_id(1) == 3
    data = ClassMap.from_names(["Car", "bus"], [7, 8])  # another project's ids: names decide
    assert coco.subset_for(data) == {1: 0}
    with pytest.raises(ValueError, match="repeat"):
        ClassMap.from_names(["a", "b"], [1, 1])
    det = Detections(np.array([[1, 2, 11, 22]], np.float32), np.array([0.5], np.float32), np.array([1]))
    assert detections_to_coco(7, det, coco) == [{"image_id": 7, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0],
                                                 "score": 0.5}]


def test_an_exif_rotated_photo_gives_boxes_in_the_displayed_orientation():
    """A camera stores the pixels turned and says so in EXIF: the predictor (the service's and model_eval's
    path) sees the displayed image, so its boxes match those on the upright photo."""
    need_data()
    import json

    from cvpipe.inference.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
    from cvpipe.inference.predictor import Predictor

    path, _ = largest_person(json.loads(ANNOTATIONS.read_text()))
    upright = np.asarray(Image.open(path).convert("RGB"))
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # turned left; EXIF 6 = "rotate 90 CW to display"
    predictor = Predictor(NANO_ONNX, COCO_CLASS_NAMES, COCO_CATEGORY_IDS, (416, 416), raw_outputs=True)
    for fmt, min_iou in (("PNG", 0.999), ("JPEG", 0.9)):
        shown = decode_image(encode(stored, fmt, orientation=6))
        assert shown.shape[:2] == upright.shape[:2]
        ref = predictor.predict(decode_image(encode(upright, fmt)))
        det = predictor.predict(shown)
        people = [i for i, label in enumerate(ref.labels) if label == 0]
        assert people, "the upright photo has people"
        iou = box_iou(ref.boxes[people], det.boxes[det.labels == 0])
        assert (iou.max(1) >= min_iou).all(), (fmt, iou.max(1))
