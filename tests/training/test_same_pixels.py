"""The same JPEG gives bit-identical network input through training (validation and the no-aug training
transform), through Predictor.preprocess (model_eval's and the service's path) and through
cvpipe.vision.letterbox(decode_image(bytes))."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from coco_data import ANNOTATIONS, COCO_DEV, NANO_ONNX, need_data

from cvpipe.data.schema import DetectionDataset
from cvpipe.inference.coco_classes import COCO_CLASS_NAMES
from cvpipe.inference.predictor import Predictor
from cvpipe.inference.torch_predictor import TorchPredictor
from cvpipe.training.dataset import YoloxTrainDataset
from cvpipe.vision import decode_image, letterbox, read_image

SIZE = 416


@pytest.mark.parametrize("cache", [False, True])
def test_same_jpeg_same_network_input_everywhere(tmp_path, cache):
    need_data()
    info = json.loads(ANNOTATIONS.read_text())["images"][0]
    path = COCO_DEV / "images" / info["file_name"]
    assert path.suffix.lower() in (".jpg", ".jpeg")
    data = path.read_bytes()

    reference, _ = letterbox(decode_image(data), (SIZE, SIZE))
    served, _ = Predictor(NANO_ONNX, COCO_CLASS_NAMES, None, (SIZE, SIZE)).preprocess(decode_image(data))
    validation, _ = TorchPredictor(torch.nn.Identity(), (SIZE, SIZE), device="cpu").inputs([read_image(path)])
    ds = DetectionDataset.build(
        [dict(image_id=1, file_name=path.name, blob=path.name, width=info["width"], height=info["height"],
              split="train")],
        [dict(ann_id=1, image_id=1, category_id=1, x=10.0, y=10.0, w=50.0, h=80.0, area=4000.0)],
        [dict(category_id=1, name="person", label=0)])
    train_item = YoloxTrainDataset(ds, path.parent, SIZE, None, 1, 1, cache=cache)[(0, 0)][0]

    assert reference.dtype == np.float32 and reference.shape == (3, SIZE, SIZE)
    assert np.array_equal(served, reference)
    assert np.array_equal(validation[0], reference)
    assert np.array_equal(train_item.numpy(), reference)
    assert (reference == 114).any() and (reference != 114).any()  # letterboxed: padding and picture
