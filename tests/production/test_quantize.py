"""INT8 quantization: a smaller ONNX model with the same input/output contract, and (static, the mode
model_pack uses) the same detections as the fp32 model on images it was not calibrated on. Speed is measured
by benchmarks/bench_quantize.py, not asserted here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from coco_data import ANNOTATIONS, COCO_DEV, NANO_ONNX, need_data

# model_pack's INT8 recipe against fp32 on 16 held-out bundled images at score 0.25 (IoU 0.5, same class),
# measured on examples/coco_sample: F1 0.74 (boxes near the threshold flip; AP on val2017 is unchanged, see
# docs/runtimes.md). Broken recipes measured the same way: calibrated on one noise image 0.63, only the head
# kept in float 0.43, dynamic quantization 0.00.
MIN_F1_VS_FP32 = 0.65


def _bundled_images(start: int, n: int) -> list:
    images = sorted(json.loads(ANNOTATIONS.read_text())["images"], key=lambda i: i["id"])
    return [COCO_DEV / "images" / i["file_name"] for i in images[start:start + n]]


@pytest.fixture(scope="module")
def static_int8(tmp_path_factory):
    need_data()
    from cvpipe.export.quantize import quantize_onnx
    from cvpipe.export.variants import KEEP_FLOAT_GROUPS, keep_float_nodes

    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    return quantize_onnx(NANO_ONNX, out, "static", _bundled_images(0, 8), (416, 416),
                         keep_float=keep_float_nodes(NANO_ONNX, KEEP_FLOAT_GROUPS))  # model_pack's recipe


def _detections(model, images):
    from cvpipe.inference.predictor import Predictor
    from cvpipe.vision import read_image

    predictor = Predictor(model, [str(i) for i in range(80)], None, (416, 416), score_thr=0.25)
    return [predictor.predict(read_image(p)) for p in images]


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantize_nano_keeps_the_contract(mode, tmp_path, static_int8):
    import onnxruntime as ort

    from cvpipe.export.quantize import quantize_onnx

    out = static_int8 if mode == "static" else quantize_onnx(NANO_ONNX, tmp_path / "int8.onnx", mode)
    assert out.stat().st_size < 0.5 * NANO_ONNX.stat().st_size
    assert not list(out.parent.glob("*.opset13.onnx"))
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)
    ref = ort.InferenceSession(str(NANO_ONNX), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert got.shape == ref.shape == (1, 3549, 85) and np.isfinite(got).all()


def test_static_int8_finds_what_fp32_finds(static_int8):
    """Held-out images (not the calibration ones): INT8 boxes matched one-to-one against fp32's."""
    from cvpipe.export.certify import match_f1

    held_out = _bundled_images(16, 16)
    fp32 = _detections(NANO_ONNX, held_out)
    match = match_f1(_detections(static_int8, held_out), fp32)
    print(f"static INT8 vs fp32 on {len(held_out)} held-out images: {match}")
    assert match["reference_boxes"] >= 20, "too few fp32 boxes for the F1 to mean anything"
    assert match["f1"] >= MIN_F1_VS_FP32, match


def test_quantize_rejects_bad_mode(tmp_path):
    from cvpipe.export.quantize import quantize_onnx

    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(NANO_ONNX, tmp_path / "x.onnx", "static", [])
    with pytest.raises(ValueError, match="mode"):
        quantize_onnx(NANO_ONNX, tmp_path / "x.onnx", "fp8")
