"""The torch head's grid decode equals cvpipe.vision.decode_raw (the service's and the evaluator's)."""

from __future__ import annotations

import numpy as np
import torch

from cvpipe.models.yolox import build_yolox
from cvpipe.vision import decode_raw


def test_torch_decode_equals_vision_decode_raw():
    torch.manual_seed(0)
    model = build_yolox("nano", 3).eval()
    images = torch.rand(2, 3, 96, 160) * 255  # not square: rows and columns of the grid must not swap
    with torch.no_grad():
        decoded = model(images).numpy()
        model.head.decode_in_inference = False
        raw = model(images).numpy()
    assert raw.shape == decoded.shape == (2, (12 * 20 + 6 * 10 + 3 * 5), 8)
    assert not np.allclose(raw[..., :4], decoded[..., :4])
    np.testing.assert_allclose(decode_raw(raw, (96, 160)), decoded, rtol=1e-6, atol=1e-4)
