"""INT8 quantization of a packed model.onnx with ONNX Runtime (optional; measured by
benchmarks/bench_quantize.py).

    quantize_onnx("model.onnx", "model_int8.onnx", mode="static", calibration_images=[...], input_size=(416, 416))

dynamic: int8 weights, activations quantized at run time (no calibration data).
static:  QDQ format around the Conv layers only (the head's concat of box regressions and probabilities stays
         float), int8 weights (per channel) and uint8 activations calibrated (MinMax) on a few images
         letterboxed exactly as the service does (cvpipe.vision.letterbox).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np

Mode = Literal["dynamic", "static"]


class _LetterboxReader:
    """CalibrationDataReader over images, one letterboxed [1,3,H,W] float32 at a time."""

    def __init__(self, input_name: str, images: Sequence[Path], input_size: tuple[int, int]):
        self.input_name, self.images, self.input_size = input_name, list(images), input_size
        self._it = iter(self.images)

    def get_next(self):
        import cv2

        from cvpipe.vision import letterbox

        for path in self._it:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                continue
            x, _ = letterbox(img, self.input_size)
            return {self.input_name: x[None].astype(np.float32)}
        return None

    def rewind(self):
        self._it = iter(self.images)


def quantize_onnx(src: str | Path, dst: str | Path, mode: Mode = "static",
                  calibration_images: Sequence[str | Path] = (), input_size: tuple[int, int] | None = None) -> Path:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    import onnx

    src, dst = Path(src), Path(dst)
    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst
    if mode != "static":
        raise ValueError(f"quantize mode must be 'dynamic' or 'static', got {mode!r}")
    images = [Path(p) for p in calibration_images]
    if not images:
        raise ValueError("static quantization needs calibration images (a few training/val images)")
    proto = onnx.load(str(src), load_external_data=False)
    inp = proto.graph.input[0]
    if input_size is None:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        input_size = (dims[2], dims[3])
    reader = _LetterboxReader(inp.name, images, tuple(input_size))
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # per-channel QDQ (DequantizeLinear axis) needs opset 13; Megvii's exports are opset 11
        from onnx import version_converter

        dst.parent.mkdir(parents=True, exist_ok=True)
        upgraded = dst.with_name(dst.stem + ".opset13.onnx")
        onnx.save(version_converter.convert_version(proto, 13), str(upgraded))
        src = upgraded
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"])
    if src.name.endswith(".opset13.onnx"):
        src.unlink()
    return dst
