from __future__ import annotations

import pytest
import torch
from coco_data import need_data

from cvpipe.models.pretrained_files import find_nano_onnx
from cvpipe.training.model_init import COCO_CLASSES, build_model, knows_classes, resolve_freeze_backbone


def test_coco_class_subset_keeps_trained_predictor_rows():
    try:
        find_nano_onnx()
    except FileNotFoundError:
        need_data()
    full, _ = build_model("nano", 80, "nano-onnx")
    sub, info = build_model("nano", 2, "nano-onnx", class_names=["dog", "person"])
    assert info["class_rows"] == [COCO_CLASSES.index("dog"), 0] == [16, 0]
    assert sub.num_classes == 2
    for a, b in zip(full.head.cls_preds, sub.head.cls_preds):
        assert torch.equal(b.weight[0], a.weight[16]) and torch.equal(b.bias[1], a.bias[0])
    # names that are not COCO classes: fresh predictors of the right size
    other, info = build_model("nano", 2, "nano-onnx", class_names=["widget", "person"])
    assert "class_rows" not in info and info["reinitialized"] and other.num_classes == 2


def test_random_init_and_unknown_file():
    model, info = build_model("nano", 3, "none")
    assert model.num_classes == 3 and info["loaded"] is False
    with pytest.raises(FileNotFoundError):
        build_model("nano", 3, "/no/such/weights.pth")


@pytest.mark.parametrize(("spec", "names", "info", "known"), [
    ("nano-onnx", ["dog", "person"], {"loaded": True, "class_rows": [16, 0]}, True),
    ("coco", list(COCO_CLASSES), {"loaded": True}, True),
    ("coco", ["widget", "person"], {"loaded": True, "reinitialized": ["head.cls_preds.0"]}, False),
    ("coco", ["dog", "person"], {"loaded": False}, False),  # weights could not be had: random start
    ("none", ["dog"], {"loaded": False}, False),
    ("runs/best.pt", ["red", "green"], {"loaded": True, "class_names": ["red", "green"]}, True),
    ("runs/best.pt", ["red", "green"], {"loaded": True, "class_names": ["green", "red"]}, False),
    ("mmdet.pth", ["red", "green"], {"loaded": True}, False),  # no saved class list: assume nothing
])
def test_start_knows_the_classes_only_from_its_own_trained_rows(spec, names, info, known):
    assert knows_classes(spec, names, info) is known
    assert resolve_freeze_backbone("auto", {"knows_classes": known}) is known
    assert resolve_freeze_backbone(True, {"knows_classes": False}) is True
    assert resolve_freeze_backbone(False, {"knows_classes": True}) is False
