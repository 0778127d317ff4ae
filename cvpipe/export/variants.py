"""Packed variants: the fp32 ONNX model in other runtimes / precisions, each certified before it is served.

    fp32           ONNX Runtime, model.onnx (always packed)
    int8           ONNX Runtime, model_int8.onnx: static QDQ, per-channel int8 weights, calibrated on training
                   images (cvpipe.export.quantize); sensitive convolutions kept float
    openvino       OpenVINO, model_openvino.xml/.bin: the fp32 graph as IR
    openvino_int8  OpenVINO, model_openvino_int8.xml/.bin: the same QDQ graph as IR (OpenVINO runs the
                   quantize/dequantize pairs as int8 kernels)

A variant is accepted when its certificate (cvpipe.export.certify) holds to the Budget; a refused variant's
files are deleted and its numbers reported. Every accepted variant is then timed against fp32 at two loads (one
request at a time, and several at once as the service's model threads run them); one slower than fp32 at both
is not offered. The default variant is the fastest at the load that matters (model_pack.default_for), and fp32
unless another is clearly faster.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    if name == "int8":  # what ONNX Runtime fuses decides whether INT8 can pay (docs/runtimes.md)
        from cvpipe.export.quantize import ort_int8_kernels

        cert["int8_kernels"] = ort_int8_kernels(inputs.model_dir / FILES[name][0])
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
    accepted: dict[str, dict[str, Any]] = {}
    refused: dict[str, dict[str, Any]] = {}
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


def withdraw(accepted: dict, refused: dict, reasons: dict[str, str], model_dir: Path) -> None:
    """Move accepted variants to refused (with their certificate and reason) and delete their files."""
    for name, reason in reasons.items():
        variant = accepted.pop(name)
        refused[name] = {"reason": reason, "certificate": variant["certificate"]}
        _remove(model_dir, variant["files"])
        log.info("model_pack: variant %s not offered (%s)", name, reason)


def _remove(model_dir: Path, files: Sequence[str]) -> None:
    for f in files:
        (model_dir / f).unlink(missing_ok=True)


def measure_speed(names: Sequence[str], inputs: PackInputs, concurrency: int = 4, rounds: int = 5,
                  images_per_thread: int = 2) -> dict[str, dict]:
    """Per variant: c=1 latency (median ms, one call at a time) and c=`concurrency` throughput (images/s,
    `concurrency` threads calling one shared predictor, as the service's model threads do), on the test image,
    one intra-op thread per call; the variants interleaved round by round (load from other processes hits
    them alike) and each round's ratio vs fp32 taken in that round (median over rounds)."""
    preds = {n: predictor(n, inputs) for n in names}
    x, _ = letterbox(inputs.test_image, inputs.input_size)
    batch = x[None]
    latency: dict[str, list[float]] = {n: [] for n in names}
    throughput: dict[str, list[float]] = {n: [] for n in names}

    def calls(p: Predictor) -> None:
        for _ in range(images_per_thread):
            p.run(batch)

    with ThreadPoolExecutor(concurrency) as pool:
        for p in preds.values():  # warm-up: first-run allocations, kernel selection, one request per thread
            list(pool.map(lambda _, p=p: p.run(batch), range(concurrency)))
        for _ in range(rounds):
            for n, p in preds.items():
                t = time.perf_counter()
                p.run(batch)
                latency[n].append(time.perf_counter() - t)
                t = time.perf_counter()
                list(pool.map(lambda _, p=p: calls(p), range(concurrency)))
                throughput[n].append(concurrency * images_per_thread / (time.perf_counter() - t))
    return {n: {"latency_ms_c1": round(statistics.median(latency[n]) * 1000, 3),
                "speedup_c1": _median_ratio(latency["fp32"], latency[n]),
                f"throughput_img_s_c{concurrency}": round(statistics.median(throughput[n]), 3),
                "speedup_throughput": _median_ratio(throughput[n], throughput["fp32"]),
                "concurrency": concurrency, "rounds": rounds} for n in names}


def _median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    return round(statistics.median(a / b for a, b in zip(num, den)), 3)


LOADS = {"latency": "speedup_c1", "throughput": "speedup_throughput"}


def choose_default(accepted: dict, inputs: PackInputs, budget: Budget, requested: str = "auto",
                   load: str = "throughput", concurrency: int = 4,
                   timer: Callable[..., dict] = measure_speed) -> tuple[str, dict, dict]:
    """(default variant, how it was chosen, {name: reason} of accepted variants that cannot pay here).

    Every accepted variant is timed at both loads and the numbers go into its certificate (`speed`). A
    non-fp32 variant slower than fp32 at both loads is not offered (it can only cost). With `requested`
    "auto", the default is the fastest at `load` ("latency": one request at a time; "throughput":
    `concurrency` at once), if at least budget.min_speedup_for_default x fp32; else fp32."""
    if load not in LOADS:
        raise ValueError(f"default_for must be one of {', '.join(LOADS)}, got {load!r}")
    if requested != "auto" and requested not in accepted:
        raise ValueError(f"model_pack.default_variant {requested!r} was not accepted "
                         f"(accepted: {', '.join(accepted)})")
    speed = timer(list(accepted), inputs, concurrency) if len(accepted) > 1 else {}
    for name, numbers in speed.items():
        accepted[name]["certificate"]["speed"] = numbers
    slower = {n: f"slower than fp32 on this machine at both loads: {v['speedup_c1']}x one request at a time, "
                 f"{v['speedup_throughput']}x at {concurrency} at once" + _why_slower(n, accepted[n])
              for n, v in speed.items() if n not in ("fp32", requested)
              and max(v["speedup_c1"], v["speedup_throughput"]) < 1.0}
    if requested != "auto":
        return requested, {"rule": "set by model_pack.default_variant", "speed": speed}, slower
    if not speed:
        return "fp32", {"rule": "only fp32 packed"}, slower
    key = LOADS[load]
    candidates = {n: v[key] for n, v in speed.items() if n not in slower}
    best = max(candidates, key=candidates.__getitem__)
    default = best if candidates[best] >= budget.min_speedup_for_default else "fp32"
    rule = (f"fastest at {load} ({'1 request at a time' if load == 'latency' else f'{concurrency} at once'}), "
            f"if >= {budget.min_speedup_for_default}x fp32")
    return default, {"rule": rule, "load": load, "concurrency": concurrency,
                     "speedup_vs_fp32": {n: v[key] for n, v in speed.items()}, "speed": speed}, slower


def _why_slower(name: str, variant: dict) -> str:
    kernels = variant["certificate"].get("int8_kernels")
    if not kernels:
        return ""
    return (f"; ONNX Runtime runs {kernels['int8_convs']} of {kernels['convs']} convolutions in int8, the "
            f"{kernels['float_convs']} kept float cost {kernels['layout_transposes']} layout transposes and "
            f"{kernels['quantize_steps']} quantize / dequantize steps around them")
