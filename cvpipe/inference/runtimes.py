"""Runtime backends of a packed model: ONNX Runtime (fp32 or INT8 QDQ ONNX) and OpenVINO (IR). Torch-free.

A backend turns a letterboxed batch [B, 3, H, W] float32 into the decoded output [B, N, 5+C]; the pre- and
post-processing around it (cvpipe.vision) is the Predictor's and the same for every backend.

    rt = open_runtime("openvino", Path("model_openvino.xml"), intra_op_threads=1, concurrency=2)
    decoded = rt.run(batch)

OpenVINO telemetry: in openvino 2026 only the model converter (openvino.tools.ovc, `convert_model`) sends it,
and only with a consent file (~/intel/openvino_telemetry) or the user's opt-in. cvpipe never imports the
converter: it reads ONNX with `Core.read_model` (the ONNX frontend) and writes IR with `save_model`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

BACKENDS = ("onnxruntime", "openvino")


class RuntimeUnavailable(RuntimeError):
    """The backend a variant needs is not installed here (e.g. openvino in a minimal image)."""


def make_session(onnx_path: str | Path, intra_op_threads: int = 1):
    """ORT CPU session; one intra-op thread by default so that N workers use N cores predictably."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])


class OrtRuntime:
    backend = "onnxruntime"

    def __init__(self, onnx_path: str | Path, intra_op_threads: int = 1):
        self.path = Path(onnx_path)
        self.session = make_session(self.path, intra_op_threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        width = self.session.get_outputs()[0].shape[-1]
        self.output_width = width if isinstance(width, int) else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoRuntime:
    """OpenVINO CPU: `concurrency` streams of `intra_op_threads` threads each, no CPU pinning; one infer request
    per thread that calls run (an infer request is not thread-safe, the compiled model is).

    Why (docs/runtimes.md, measured): OpenVINO runs as many requests at once as it has streams, and compiled for
    latency (one stream) it runs each request in the calling thread and pins that thread to the first CPU.
    Four threads calling one model, or four models each with one stream, then all ran on CPU 0: half the
    throughput of ONNX Runtime on 2 cores. Pinning stays off because cvpipe does not own the cores (other
    workers, other processes): two processes that each pin "their" first core pin the same one."""

    backend = "openvino"

    def __init__(self, model_path: str | Path, intra_op_threads: int = 1, concurrency: int | None = None):
        ov = import_openvino()
        self.path = Path(model_path)
        core = ov.Core()
        model = core.read_model(str(self.path))
        inp = model.inputs[0]
        self.input_name = inp.get_any_name()
        batch_dim = inp.get_partial_shape()[0]
        self.fixed_batch = batch_dim.get_length() if batch_dim.is_static else None
        width = model.outputs[0].get_partial_shape()[-1]
        self.output_width = width.get_length() if width.is_static else None
        self.compiled = core.compile_model(model, "CPU", openvino_config(intra_op_threads, concurrency))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self._local = threading.local()

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(batch)})
        return request.get_output_tensor(0).data.copy()


def openvino_config(intra_op_threads: int = 1, concurrency: int | None = None) -> dict:
    """CPU plugin settings: one stream per concurrent caller (default: one per usable CPU, at most 8, as the
    service's model threads), `intra_op_threads` threads per stream, f32 (no silent bf16 on newer CPUs)."""
    streams = max(1, int(concurrency or min(8, usable_cpus())))
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * max(1, int(intra_op_threads)),
            "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "f32"}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise RuntimeUnavailable(f"this variant needs OpenVINO (pip install 'cvpipe[openvino]'): {e}") from None
    return ov


def backend_available(backend: str) -> bool:
    if backend == "onnxruntime":
        return True
    try:
        import_openvino()
    except RuntimeUnavailable:
        return False
    return True


def open_runtime(backend: str, path: str | Path, intra_op_threads: int = 1, concurrency: int | None = None):
    """`concurrency`: how many threads may call run at once (OpenVINO compiles one stream for each; ONNX
    Runtime sessions run every call in its caller's thread and need nothing)."""
    if backend == "onnxruntime":
        return OrtRuntime(path, intra_op_threads)
    if backend == "openvino":
        return OpenVinoRuntime(path, intra_op_threads, concurrency)
    raise ValueError(f"unknown runtime backend {backend!r} (known: {', '.join(BACKENDS)})")


def onnx_to_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """ONNX -> OpenVINO IR (.xml + .bin next to it), fp32 weights (no fp16 compression: CPU runs f32 anyway)."""
    ov = import_openvino()
    xml_path = Path(xml_path)
    model = ov.Core().read_model(str(onnx_path))  # the ONNX frontend; no converter, no telemetry
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path
