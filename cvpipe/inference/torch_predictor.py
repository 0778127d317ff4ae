"""The one PyTorch predictor: a YOLOX nn.Module behind the same letterbox, decode and NMS as the ONNX
`Predictor` (cvpipe.vision), for training's validation, the export parity check, the pack's reference
detections and `cvpipe predict` on a checkpoint.

The network runs with raw outputs (the head's export layout) and cvpipe.vision.decode_raw decodes them: the
numpy decode is the one every path shares, and parity against an exported (decoded) graph checks the graph's
decode too. The model's mode and head flag are restored after each call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cvpipe.vision import Detections, decode_raw, letterbox, postprocess


@contextlib.contextmanager
def raw_inference(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with raw head outputs, without gradients; both restored afterwards."""
    head: Any = getattr(model, "module", model).head  # DDP wraps the model in .module
    was_training, decode = model.training, head.decode_in_inference
    model.eval()
    head.decode_in_inference = False
    try:
        with torch.no_grad():
            yield model
    finally:
        head.decode_in_inference = decode
        model.train(was_training)


class TorchPredictor:
    """BGR images -> Detections in original pixels; `decoded(batch)` for the network's decoded output."""

    def __init__(self, model: nn.Module, input_size: Sequence[int], score_thr: float = 0.25, nms_thr: float = 0.45,
                 max_det: int = 300, device: torch.device | str | None = None):
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.score_thr, self.nms_thr, self.max_det = float(score_thr), float(nms_thr), int(max_det)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    def decoded(self, batch: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] float32 (letterboxed, BGR 0..255) -> decoded [B, N, 5+C] (cx, cy, w, h input px)."""
        with raw_inference(self.model) as model:
            raw = model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
        return decode_raw(raw, self.input_size)

    def inputs(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        """The network input [B, 3, H, W] float32 (letterboxed, BGR 0..255) and each image's scale."""
        boxed = [letterbox(image, self.input_size) for image in images]
        return np.stack([x for x, _ in boxed]), [scale for _, scale in boxed]

    def predict_batch(self, images: Sequence[np.ndarray], score_thr: float | None = None) -> list[Detections]:
        if not images:
            return []
        batch, scales = self.inputs(images)
        decoded = self.decoded(batch)
        thr = self.score_thr if score_thr is None else float(score_thr)
        out = []
        for image, pred, scale in zip(images, decoded, scales):
            pred = pred[np.isfinite(pred).all(1)]  # an unstable model (early training) can overflow exp(w, h)
            out.append(postprocess(pred, scale, thr, self.nms_thr, self.max_det, image.shape[:2]))
        return out

    def predict(self, image: np.ndarray, score_thr: float | None = None) -> Detections:
        return self.predict_batch([image], score_thr)[0]

    __call__ = predict_batch  # the evaluation engine's predict_batch
