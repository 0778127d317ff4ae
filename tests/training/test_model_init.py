from __future__ import annotations

import pytest
import torch
from coco_data import need_data

from cvpipe.models.pretrained_files import find_nano_onnx
from cvpipe.training.model_init import COCO_CLASSES, build_model


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
