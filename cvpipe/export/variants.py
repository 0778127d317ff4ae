"""Packed variants: the fp32 ONNX model in other runtimes / precisions, each certified before it is served.

    fp32           ONNX Runtime, model.onnx (always packed)
    int8           ONNX Runtime, model_int8.onnx: static QDQ, per-channel int8 weights, calibrated on training
                   images (cvpipe.export.quantize); sensitive convolutions kept float
    openvino       OpenVINO, model_openvino.xml/.bin: the fp32 graph as IR
    openvino_int8  OpenVINO, model_openvino_int8.xml/.bin: the same QDQ graph as IR (OpenVINO runs the
                   quantize/dequantize pairs as int8 kernels)

A variant is accepted when its certificate (cvpipe.export.certify) holds to the Budget; a refused variant's
files are deleted and its numbers reported. The default variant is the fastest accepted one on the test image
(timed interleaved against fp32, one thread, batch 1), and fp32 unless another is clearly faster.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cvpipe.export.certify import ValSplit, certify
from cvpipe.inference.predictor import Predictor
from cvpipe.inference.runtimes import RuntimeUnavailable, backend_available
from cvpipe.vision import Detections, letterbox

log = logging.getLogger(__name__)

BACKEND = {"fp32": "onnxruntime", "int8": "onnxruntime", "openvino": "openvino", "openvino_int8": "openvino"}
PRECISION = {"fp32": "fp32", "int8": "int8", "openvino": "fp32", "openvino_int8": "int8"}
FILES = {"fp32": ["model.onnx"], "int8": ["model_int8.onnx"],
         "openvino": ["model_openvino.xml", "model_openvino.bin"],
         "openvino_int8": ["model_openvino_int8.xml", "model_openvino_int8.bin"]}
KEEP_FLOAT_GROUPS = ("head", "stem", "depthwise")


@dataclass
class Budget:
    max_ap_drop: float = 1.0  # AP points (x100) on the validation split vs fp32
    min_match_f1: float = 0.9  # INT8 boxes vs the reference model at IoU 0.5
    parity_atol: float = 1e-4  # fp32 variants: decoded outputs vs ONNX Runtime fp32 (boxes / input side)
    min_speedup_for_default: float = 1.1  # a non-fp32 default must be this much faster on the test image


@dataclass
class PackInputs:
    """What certifying needs: the fp32 model dir, the classes and thresholds, images, the reference model."""
    model_dir: Path
    class_names: list[str]
    category_ids: list[int]
    input_size: tuple[int, int]
    thresholds: dict
    test_image: np.ndarray
    match_images: list[np.ndarray]  # validation images (or the test image) for box matching and batches
    reference: list[Detections]  # the reference model's detections on match_images (serving threshold)
    reference_name: str  # "pytorch" or "onnx fp32"
    val: ValSplit | None = None
    calibration_images: list[Path] = field(default_factory=list)
    keep_float: Sequence[str] = KEEP_FLOAT_GROUPS


def keep_float_nodes(onnx_path: Path, groups: Sequence[str]) -> list[str]:
    """Names of the Conv nodes INT8 leaves in float: the head's output convs, the stem (first conv: raw
    pixels in), depthwise convs (one channel per filter: per-tensor activation scales hurt them most)."""
    import onnx

    from cvpipe.export.quantize import head_output_convs

    proto = onnx.load(str(onnx_path), load_external_data=False)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    names = set(head_output_convs(proto)) if "head" in groups else set()
    if "stem" in groups and convs:
        names.add(convs[0].name)
    if "depthwise" in groups:
        names |= {n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)}
    return sorted(names)


def build_files(name: str, inputs: PackInputs, scratch: Path) -> list[str]:
    """Write the variant's files into the model dir; returns their names."""
    from cvpipe.inference.runtimes import onnx_to_openvino

    d, fp32 = inputs.model_dir, inputs.model_dir / "model.onnx"
    if name == "openvino":
        onnx_to_openvino(fp32, d / "model_openvino.xml")
    elif name in ("int8", "openvino_int8"):
        qdq = _quantized(inputs, scratch)
        if name == "int8":
            shutil.copyfile(qdq, d / "model_int8.onnx")
        else:
            onnx_to_openvino(qdq, d / "model_openvino_int8.xml")
    elif name != "fp32":
        raise ValueError(f"unknown variant {name!r} (known: {', '.join(BACKEND)})")
    return FILES[name]


def _quantized(inputs: PackInputs, scratch: Path) -> Path:
    """The QDQ INT8 graph (built once, shared by int8 and openvino_int8)."""
    from cvpipe.export.quantize import quantize_onnx

    out = scratch / "model_qdq.onnx"
    if not out.is_file():
        if not inputs.calibration_images:
            raise ValueError("no training images to calibrate INT8 on (needs a data_prep run with a train split)")
        fp32 = inputs.model_dir / "model.onnx"
        quantize_onnx(fp32, out, "static", inputs.calibration_images, inputs.input_size,
                      keep_float=keep_float_nodes(fp32, inputs.keep_float))
    return out


def predictor(name: str, inputs: PackInputs, score_thr: float | None = None) -> Predictor:
    thr = dict(inputs.thresholds)
    if score_thr is not None:
        thr["score_thr"] = score_thr
    return Predictor(inputs.model_dir / FILES[name][0], inputs.class_names, inputs.category_ids, inputs.input_size,
                     backend=BACKEND[name], variant=name, **thr)


def output_parity(name: str, inputs: PackInputs) -> dict:
    """Decoded outputs of the variant vs ONNX Runtime fp32 on the test image."""
    from cvpipe.export.onnx import output_diff

    x, _ = letterbox(inputs.test_image, inputs.input_size)
    ref = predictor("fp32", inputs).run(x[None])
    got = predictor(name, inputs).run(x[None])
    diff, scaled = output_diff(got, ref, inputs.input_size)
    return {"max_abs_diff": diff, "max_scaled_diff": scaled}


def certify_variant(name: str, inputs: PackInputs) -> dict:
    def predict_at(score_thr):
        return predictor(name, inputs, score_thr).predict_batch

    cert = certify(predict_at, inputs.reference, inputs.match_images, inputs.val, inputs.reference_name)
    cert.update(backend=BACKEND[name], precision=PRECISION[name], parity=output_parity(name, inputs))
    return cert


def verdict(name: str, cert: dict, fp32_ap: float | None, budget: Budget) -> str | None:
    """None when the variant may be served, else the reason it is refused."""
    if not cert["batch"]["ok"]:
        return f"batch check failed: {cert['batch']['detail']}"
    if PRECISION[name] == "fp32":
        if name != "fp32" and cert["parity"]["max_scaled_diff"] > budget.parity_atol:
            return f"outputs differ from ONNX Runtime fp32 by {cert['parity']['max_scaled_diff']:.2e} " \
                   f"(scaled; budget {budget.parity_atol})"
        return None
    if fp32_ap is None or cert["ap_val"] is None:
        return "no validation split to measure the AP budget on"
    drop = round((fp32_ap - cert["ap_val"]) * 100, 3)
    cert["ap_drop_points"] = drop
    if drop > budget.max_ap_drop:
        return f"AP {cert['ap_val']:.4f} vs fp32 {fp32_ap:.4f}: drop {drop:.2f} points > {budget.max_ap_drop}"
    if cert["match"]["f1"] < budget.min_match_f1:
        return f"box match F1 {cert['match']['f1']} vs {cert['match']['reference']} < {budget.min_match_f1}"
    return None


def build_and_certify(names: Sequence[str], inputs: PackInputs, budget: Budget, scratch: Path
                      ) -> tuple[dict, dict]:
    """({name: {"backend", "files", "certificate"}} accepted, {name: {"reason", "certificate"}} refused).
    fp32 is always certified first (its AP is the budget's baseline) and always accepted."""
    accepted, refused = {}, {}
    fp32_ap = None
    for name in ["fp32", *[n for n in names if n != "fp32"]]:
        t0 = time.perf_counter()
        try:
            if not backend_available(BACKEND[name]):
                raise RuntimeUnavailable(f"{BACKEND[name]} is not installed")
            files = build_files(name, inputs, scratch)
            cert = certify_variant(name, inputs)
        except (RuntimeUnavailable, ValueError, RuntimeError) as e:  # a variant that cannot be built is refused
            refused[name] = {"reason": f"not built: {e}", "certificate": None}
            _remove(inputs.model_dir, FILES[name])
            continue
        cert["seconds"] = round(time.perf_counter() - t0, 2)
        fp32_ap = cert["ap_val"] if name == "fp32" else fp32_ap
        reason = verdict(name, cert, fp32_ap, budget)
        if reason is None or name == "fp32":
            accepted[name] = {"backend": BACKEND[name], "precision": PRECISION[name], "files": files,
                              "certificate": cert}
        else:
            refused[name] = {"reason": reason, "certificate": cert}
            _remove(inputs.model_dir, files)
        log.info("model_pack: variant %s %s (%s)", name, "refused" if name in refused else "accepted",
                 refused.get(name, {}).get("reason") or f"AP {cert['ap_val']}, F1 {cert['match']['f1']}")
    return accepted, refused


def _remove(model_dir: Path, files: Sequence[str]) -> None:
    for f in files:
        (model_dir / f).unlink(missing_ok=True)


def time_variants(names: Sequence[str], inputs: PackInputs, rounds: int = 7) -> dict[str, float]:
    """Median ms per image on the test image, one thread, batch 1, the variants interleaved round by round
    (so that load from other processes hits them alike)."""
    preds = {n: predictor(n, inputs) for n in names}
    x, _ = letterbox(inputs.test_image, inputs.input_size)
    batch = x[None]
    times: dict[str, list[float]] = {n: [] for n in names}
    for p in preds.values():
        p.run(batch)  # warm-up: first-run allocations and kernel selection
    for _ in range(rounds):
        for n, p in preds.items():
            t = time.perf_counter()
            p.run(batch)
            times[n].append(time.perf_counter() - t)
    return {n: round(statistics.median(v) * 1000, 3) for n, v in times.items()}


def choose_default(accepted: dict, inputs: PackInputs, budget: Budget, requested: str = "auto",
                   timer: Callable[..., dict] = time_variants) -> tuple[str, dict]:
    """(default variant, how it was chosen)."""
    if requested != "auto":
        if requested not in accepted:
            raise ValueError(f"model_pack.default_variant {requested!r} was not accepted "
                             f"(accepted: {', '.join(accepted)})")
        return requested, {"rule": "set by model_pack.default_variant"}
    if len(accepted) == 1:
        return "fp32", {"rule": "only fp32 packed"}
    ms = timer(list(accepted), inputs)
    speedup = {n: round(ms["fp32"] / v, 3) for n, v in ms.items()}
    best = max(speedup, key=speedup.get)
    default = best if speedup[best] >= budget.min_speedup_for_default else "fp32"
    return default, {"rule": f"fastest on the test image (1 thread, batch 1), if >= "
                             f"{budget.min_speedup_for_default}x fp32", "median_ms": ms, "speedup_vs_fp32": speedup}
