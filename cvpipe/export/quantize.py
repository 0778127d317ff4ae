"""INT8 quantization of a YOLOX ONNX graph with ONNX Runtime (static QDQ, or dynamic for comparison).

    quantize_onnx("model.onnx", "model_int8.onnx", mode="static", calibration_images=[...], input_size=(416, 416))

static:  QDQ format around the Conv layers, int8 weights per output channel, uint8 activations calibrated on
         images letterboxed exactly as the service does (cvpipe.vision.read_image + letterbox). The detection
         head's last convolutions (the 1x1 box / objectness / class predictions, found from the graph: the
         first Conv on every path back from the output) and everything after them (sigmoids, concat, decode)
         stay float: they carry the outputs' dynamic range and are where published INT8 YOLOX/YOLO recipes
         keep float precision.
dynamic: int8 weights, activations quantized at run time (no calibration data; measured unusable for YOLOX,
         kept for the benchmark).

Whether an INT8 graph is good enough is not decided here: model_pack measures it (AP on the validation split,
box match against the fp32 model) and refuses it outside the accuracy budget.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from cvpipe.vision import ImageDecodeError, letterbox, read_image

Mode = Literal["dynamic", "static"]
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class _LetterboxReader:
    """CalibrationDataReader over image files, one letterboxed [1,3,H,W] float32 at a time."""

    def __init__(self, input_name: str, images: Sequence[Path], input_size: tuple[int, int]):
        self.input_name, self.images, self.input_size = input_name, list(images), input_size
        self._it = iter(self.images)

    def get_next(self):
        for path in self._it:
            try:
                image = read_image(path)
            except (ImageDecodeError, OSError):  # an unreadable calibration image is skipped, not fatal
                continue
            x, _ = letterbox(image, self.input_size)
            return {self.input_name: x[None].astype(np.float32)}
        return None

    def rewind(self):
        self._it = iter(self.images)


def head_output_convs(model) -> list[str]:
    """Names of the Conv nodes closest to the graph outputs: walking back from each output through non-Conv
    nodes (sigmoid, concat, reshape, decode), the first Conv on every path (YOLOX: the 1 x 1 prediction
    convs of the head: box, objectness and class, per level)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found, seen = [], set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            found.append(node.name)
        else:
            stack.extend(node.input)
    return sorted(found)


def inline_constant_identities(proto) -> int:
    """Replace every Identity of an initializer by its own copy of that initializer; returns how many.

    torch.onnx.export stores equal constants once and feeds the other users through Identity nodes (e.g. the
    BN-folded biases of an untrained model, all zero). ONNX Runtime fuses DQ -> Conv -> Q into an int8
    QLinearConv only when the bias comes straight from a DequantizeLinear; behind an Identity the Conv stays
    float between dequantize / quantize steps: measured on YOLOX-S 640, 11 of 73 quantized convs fused and
    INT8 ran at 0.90x fp32; with the copies, 73 of 73 and 2.2x (docs/runtimes.md)."""
    import onnx

    inits = {t.name: t for t in proto.graph.initializer}
    identities = [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    for node in identities:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)
    return len(identities)


def _prepared_copy(proto, tmp: Path) -> Path:
    """The graph at opset >= 13 (per-channel DequantizeLinear needs an axis), without Identity-of-constant
    nodes (they block ONNX Runtime's int8 fusion, see inline_constant_identities), with every node named (node
    exclusion is by name; names are given before nodes are removed, so they match the fp32 graph's), saved in
    `tmp`."""
    import onnx
    from onnx import version_converter

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # Megvii's exports are opset 11
        proto = version_converter.convert_version(proto, 13)
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"cvpipe_node_{i}"
    inline_constant_identities(proto)
    path = tmp / "prepared.onnx"
    onnx.save(proto, str(path))
    return path


def quantize_onnx(src: str | Path, dst: str | Path, mode: Mode = "static",
                  calibration_images: Sequence[str | Path] = (), input_size: tuple[int, int] | None = None, *,
                  keep_float: Iterable[str] | Literal["head"] | None = "head", per_channel: bool = True,
                  calibration: str = "minmax", reduce_range: bool = False) -> Path:
    """Quantize `src` into `dst`; returns dst. `keep_float`: node names left in float ("head": the head's
    output convs, see head_output_convs). `reduce_range`: 7-bit weights, for CPUs without VNNI where the
    u8 x s8 instruction (VPMADDUBSW) can saturate."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst
    if mode != "static":
        raise ValueError(f"quantize mode must be 'dynamic' or 'static', got {mode!r}")
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, got {calibration!r}")
    images = [Path(p) for p in calibration_images]
    if not images:
        raise ValueError("static quantization needs calibration images (a few training images)")
    proto = onnx.load(str(src))
    inp = proto.graph.input[0]
    if input_size is None:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        input_size = (dims[2], dims[3])
    excluded = head_output_convs(proto) if keep_float == "head" else list(keep_float or [])
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    with tempfile.TemporaryDirectory(prefix="cvpipe-quant-") as tmp:
        prepared = _prepared_copy(proto, Path(tmp))
        quantize_static(str(prepared), str(dst), _LetterboxReader(inp.name, images, (input_size[0], input_size[1])),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=excluded,
                        extra_options={"CalibTensorRangeSymmetric": False, "CalibMovingAverage": True}
                        if calibration == "minmax" else {})
    return dst


def ort_int8_kernels(qdq_path: str | Path) -> dict:
    """What ONNX Runtime makes of a QDQ graph (its optimized graph, as the service's sessions build it): convs
    fused into int8 QLinearConv, convs left float, and the layout transposes (int8 convs run NHWC, float ones
    NCHW) and quantize / dequantize steps at the borders between them."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="cvpipe-ort-opt-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(qdq_path), options, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {"int8_convs": ops["QLinearConv"], "float_convs": ops["Conv"], "convs": ops["QLinearConv"] + ops["Conv"],
            "layout_transposes": ops["Transpose"],
            "quantize_steps": ops["QuantizeLinear"] + ops["DequantizeLinear"]}
