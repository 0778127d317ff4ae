"""INT8 quantization produces a smaller ONNX model with the same input/output contract (accuracy and speed
are measured by benchmarks/bench_quantize.py, not asserted here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
NANO_ONNX = REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantize_nano(mode, tmp_path, person_image):
    import onnxruntime as ort

    from cvpipe.export.quantize import quantize_onnx

    out = quantize_onnx(NANO_ONNX, tmp_path / "int8.onnx", mode, [person_image], (416, 416))
    assert out.stat().st_size < 0.5 * NANO_ONNX.stat().st_size
    assert not list(tmp_path.glob("*.opset13.onnx"))
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)
    ref = ort.InferenceSession(str(NANO_ONNX), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert got.shape == ref.shape == (1, 3549, 85) and np.isfinite(got).all()


def test_quantize_rejects_bad_mode(tmp_path):
    from cvpipe.export.quantize import quantize_onnx

    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(NANO_ONNX, tmp_path / "x.onnx", "static", [])
    with pytest.raises(ValueError, match="mode"):
        quantize_onnx(NANO_ONNX, tmp_path / "x.onnx", "fp8")
