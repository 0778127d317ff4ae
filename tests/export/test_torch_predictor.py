"""The one torch predictor: the same decoded outputs as the exported graph (batched, through the ONNX
Predictor's own preprocessing), and the model left as it was found (train mode, head flag)."""

from __future__ import annotations

import numpy as np
import torch

from cvpipe.export.onnx import export_onnx, output_diff
from cvpipe.inference.predictor import Predictor
from cvpipe.inference.torch_predictor import TorchPredictor
from cvpipe.models.yolox import build_yolox


def test_same_outputs_as_the_exported_graph_and_the_model_left_as_found(tmp_path):
    torch.manual_seed(0)
    model = build_yolox("nano", num_classes=3)
    path = export_onnx(model, tmp_path / "m.onnx", (128, 160))
    images = [np.random.default_rng(i).integers(0, 255, (100 + 20 * i, 140, 3), dtype=np.uint8) for i in range(3)]
    model.train()
    model.head.decode_in_inference = True
    torch_pred = TorchPredictor(model, (128, 160), score_thr=0.05)
    onnx_pred = Predictor(path, ["a", "b", "c"], None, (128, 160))
    batch, scales = torch_pred.inputs(images)
    assert np.array_equal(batch, np.stack([onnx_pred.preprocess(im)[0] for im in images]))
    _, scaled = output_diff(torch_pred.decoded(batch), onnx_pred.run(batch), (128, 160))
    assert scaled < 1e-4
    dets = torch_pred.predict_batch(images)
    assert [d.image_size for d in dets] == [im.shape[:2] for im in images]
    assert model.training and model.head.decode_in_inference  # restored
