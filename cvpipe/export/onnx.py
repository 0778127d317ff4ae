"""ONNX export of YOLOX: the decoded graph, the end-to-end graph (decoding + NMS inside), parity checks.

Graphs (input `images` float32 [B, 3, H, W], BGR 0..255, letterbox top-left, pad 114):
- decoded (model.onnx): output `output` [B, N, 5+C] = cx, cy, w, h (input px), obj, C class probs.
- end-to-end (model_e2e.onnx): the decoded graph plus, appended with onnx.helper:
  score = obj * class prob of the best class only (as cvpipe.vision.postprocess), boxes to
  xyxy, ONNX NonMaxSuppression per class (IoU nms_thr, score >= score_thr), then the best max_det rows
  (TopK). Output `detections` float32 [K, 7] = (batch index, x1, y1, x2, y2, score, class index), highest
  score first, boxes in INPUT (letterboxed) pixels: divide by the letterbox scale r = min(H/h, W/w) for
  original pixels. max_det caps the rows of the whole batch: for exactly per-image max_det, run batch 1.
- raw -> decoded (bring your own): `append_decode` turns a raw-output YOLOX ONNX (dx, dy, log w, log h,
  obj, cls) into the decoded contract with grid/stride constants for its fixed input size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cvpipe.vision import STRIDES, letterbox, make_grid, postprocess

if TYPE_CHECKING:
    from cvpipe.inference.torch_predictor import TorchPredictor

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME, E2E_OUTPUT_NAME = "images", "output", "detections"


class ParityError(AssertionError):
    """The ONNX graph does not reproduce the PyTorch model."""


def _const(graph: onnx.GraphProto, name: str, value) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _node(graph: onnx.GraphProto, op: str, inputs: list[str], output: str, **attrs) -> str:
    graph.node.append(helper.make_node(op, inputs, [output], name=output, **attrs))
    return output


def _slice_last(graph, src: str, start: int, end: int, name: str) -> str:
    s = _const(graph, f"{name}_start", np.array([start], np.int64))
    e = _const(graph, f"{name}_end", np.array([end], np.int64))
    a = _const(graph, f"{name}_axis", np.array([-1], np.int64))
    return _node(graph, "Slice", [src, s, e, a], name)


def append_decode(model: onnx.ModelProto, input_size: Sequence[int], strides=STRIDES) -> onnx.ModelProto:
    """Raw-output YOLOX ONNX -> decoded outputs (`output` [B, N, 5+C]); N must fit input_size and strides."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    if len(g.output) != 1:
        raise ValueError(f"expected a YOLOX graph with one output, it has {len(g.output)}")
    raw_name = g.output[0].name
    if raw_name == OUTPUT_NAME:  # free the name for the decoded output
        raw_name = "raw_output"
        for node in g.node:
            node.output[:] = [raw_name if o == OUTPUT_NAME else o for o in node.output]
            node.input[:] = [raw_name if i == OUTPUT_NAME else i for i in node.input]
    grid, stride = make_grid((int(input_size[0]), int(input_size[1])), strides)
    dims = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    if len(dims) == 3 and dims[1] and dims[1] != len(grid):
        raise ValueError(f"the graph outputs {dims[1]} anchor points but input size {tuple(input_size)} with "
                         f"strides {strides} gives {len(grid)}; wrong input_size?")
    n_out = dims[-1] if dims else 0
    g.output.pop()
    p = "cvpipe_decode"
    xy = _slice_last(g, raw_name, 0, 2, f"{p}_xy")
    wh = _slice_last(g, raw_name, 2, 4, f"{p}_wh")
    rest = _slice_last(g, raw_name, 4, 2 ** 31 - 1, f"{p}_rest")
    gc, sc = _const(g, f"{p}_grid", grid), _const(g, f"{p}_stride", stride)
    xy = _node(g, "Mul", [_node(g, "Add", [xy, gc], f"{p}_xy_grid"), sc], f"{p}_xy_px")
    wh = _node(g, "Mul", [_node(g, "Exp", [wh], f"{p}_wh_exp"), sc], f"{p}_wh_px")
    _node(g, "Concat", [xy, wh, rest], OUTPUT_NAME, axis=-1)
    batch = g.input[0].type.tensor_type.shape.dim[0]
    b = batch.dim_param or batch.dim_value or "batch"
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [b, len(grid), n_out or None]))
    onnx.checker.check_model(model)
    return model


def append_e2e(model: onnx.ModelProto, score_thr: float = 0.25, nms_thr: float = 0.45,
               max_det: int = 300) -> onnx.ModelProto:
    """Decoded graph -> end-to-end graph with output `detections` [K, 7] (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    dec = g.output[0].name
    g.output.pop()
    p = "cvpipe_e2e"
    cxcy = _slice_last(g, dec, 0, 2, f"{p}_cxcy")
    wh = _slice_last(g, dec, 2, 4, f"{p}_wh")
    obj = _slice_last(g, dec, 4, 5, f"{p}_obj")
    cls = _slice_last(g, dec, 5, 2 ** 31 - 1, f"{p}_cls")
    half = _node(g, "Mul", [wh, _const(g, f"{p}_half", np.array(0.5, np.float32))], f"{p}_half_wh")
    boxes = _node(g, "Concat", [_node(g, "Sub", [cxcy, half], f"{p}_x1y1"), _node(g, "Add", [cxcy, half], f"{p}_x2y2")],
                  f"{p}_boxes", axis=-1)  # [B, N, 4]
    # keep only each box's best class, as the numpy postprocess does (no box reported under two classes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset >= 18:  # axes became an input in opset 18
        best = _node(g, "ReduceMax", [cls, _const(g, f"{p}_last_axis", np.array([-1], np.int64))], f"{p}_cls_max",
                     keepdims=1)
    else:
        best = _node(g, "ReduceMax", [cls], f"{p}_cls_max", axes=[-1], keepdims=1)
    is_best = _node(g, "Cast", [_node(g, "Equal", [cls, best], f"{p}_is_best_bool")], f"{p}_is_best",
                    to=TensorProto.FLOAT)
    scores = _node(g, "Mul", [_node(g, "Mul", [cls, obj], f"{p}_obj_cls"), is_best], f"{p}_scores")  # [B, N, C]
    scores_t = _node(g, "Transpose", [scores], f"{p}_scores_t", perm=[0, 2, 1])  # [B, C, N]
    sel = _node(g, "NonMaxSuppression", [boxes, scores_t, _const(g, f"{p}_max_det", np.array([max_det], np.int64)),
                                         _const(g, f"{p}_iou", np.array([nms_thr], np.float32)),
                                         _const(g, f"{p}_score_thr", np.array([score_thr], np.float32))],
                f"{p}_selected", center_point_box=0)  # [K, 3] (batch, class, box)
    batch_idx = _slice_last(g, sel, 0, 1, f"{p}_sel_batch")
    cls_idx = _slice_last(g, sel, 1, 2, f"{p}_sel_class")
    box_idx = _slice_last(g, sel, 2, 3, f"{p}_sel_box")
    bb = _node(g, "Concat", [batch_idx, box_idx], f"{p}_sel_batch_box", axis=-1)
    sel_boxes = _node(g, "GatherND", [boxes, bb], f"{p}_sel_boxes")  # [K, 4]
    sel_scores = _node(g, "Reshape", [_node(g, "GatherND", [scores_t, sel], f"{p}_sel_scores_1d"),
                                      _const(g, f"{p}_col", np.array([-1, 1], np.int64))], f"{p}_sel_scores")
    f_batch = _node(g, "Cast", [batch_idx], f"{p}_batch_f", to=TensorProto.FLOAT)
    f_cls = _node(g, "Cast", [cls_idx], f"{p}_class_f", to=TensorProto.FLOAT)
    rows = _node(g, "Concat", [f_batch, sel_boxes, sel_scores, f_cls], f"{p}_rows", axis=-1)  # [K, 7]
    # all rows sorted by score (TopK with k = K), then the first max_det (Slice clamps; no int Min before opset 12)
    k = _node(g, "Shape", [f"{p}_sel_scores_1d"], f"{p}_num_selected")
    g.node.append(helper.make_node("TopK", [f"{p}_sel_scores_1d", k], [f"{p}_top_scores", f"{p}_top_idx"],
                                   name=f"{p}_topk", axis=0, largest=1, sorted=1))
    ranked = _node(g, "Gather", [rows, f"{p}_top_idx"], f"{p}_ranked", axis=0)
    _node(g, "Slice", [ranked, _const(g, f"{p}_first", np.array([0], np.int64)),
                       _const(g, f"{p}_max_det_total", np.array([max_det], np.int64)),
                       _const(g, f"{p}_rows_axis", np.array([0], np.int64))], E2E_OUTPUT_NAME)
    g.output.append(helper.make_tensor_value_info(E2E_OUTPUT_NAME, TensorProto.FLOAT, ["num_detections", 7]))
    onnx.checker.check_model(model)
    return model


def set_metadata(model: onnx.ModelProto, meta: dict) -> None:
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=str(k), value=str(v)))


def export_onnx(model: Any, path: str | Path, input_size: Sequence[int], dynamic_batch: bool = True,
                opset: int = 17, metadata: dict | None = None) -> Path:
    """Export a YOLOX nn.Module to `path` as the decoded graph: the network's raw outputs with the decode
    appended from cvpipe.vision's grid (append_decode), the same formula every predictor decodes with."""
    import torch

    from cvpipe.inference.torch_predictor import raw_inference

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (int(input_size[0]), int(input_size[1]))
    dummy = torch.zeros(1, 3, *size)
    with raw_inference(model), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks in forward() become constants
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is the one verified here
        tmp_path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (dummy,), str(tmp_path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch
                          else None, opset_version=opset, do_constant_folding=True, dynamo=False)
        proto = append_decode(onnx.load(str(tmp_path)), size)
    set_metadata(proto, {"producer": "cvpipe", "input_size": list(size), "graph": "decoded", **(metadata or {})})
    onnx.save(proto, str(path))
    return path


def ort_session(path: str | Path):
    from cvpipe.inference.runtimes import make_session

    return make_session(path, 1)


def same_detections(a, b, box_tol: float = 1e-2, score_tol: float = 1e-4) -> tuple[bool, str]:
    """Two Detections equal up to float noise (same count, labels, boxes, scores in score order)."""
    if len(a) != len(b):
        return False, f"{len(a)} vs {len(b)} detections"
    if not len(a):
        return True, "no detections on either side"
    oa, ob = np.argsort(-a.scores, kind="stable"), np.argsort(-b.scores, kind="stable")
    if not np.array_equal(a.labels[oa], b.labels[ob]):
        return False, "different classes"
    db = float(np.abs(a.boxes[oa] - b.boxes[ob]).max())
    ds = float(np.abs(a.scores[oa] - b.scores[ob]).max())
    if db > box_tol or ds > score_tol:
        return False, f"boxes differ by {db:.2e} px, scores by {ds:.2e}"
    return True, f"{len(a)} detections, boxes within {db:.1e} px, scores within {ds:.1e}"


def e2e_to_detections(rows: np.ndarray, scale: float, image_hw, batch_index: int = 0):
    """Rows of the e2e output for one image -> Detections in original pixels (clipped)."""
    from cvpipe.vision import Detections

    rows = rows[rows[:, 0] == batch_index]
    rows = rows[np.argsort(-rows[:, 5], kind="stable")]
    boxes = rows[:, 1:5] / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image_hw[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image_hw[0])
    return Detections(boxes.astype(np.float32), rows[:, 5].astype(np.float32), rows[:, 6].astype(np.int64))


BOX_SCORE_FLOOR = 1e-4  # anchors below this score never become detections (COCO mAP uses 1e-3)
BOX_TOP_K = 100  # ... except an image's best anchors, whatever their score


def output_diff(got: np.ndarray, ref: np.ndarray, input_size) -> tuple[float, float]:
    """(max absolute difference, max difference with box columns divided by the input side) of two decoded
    outputs. Boxes are compared where the reference's score (obj x best class) reaches BOX_SCORE_FLOOR or ranks
    in the image's top BOX_TOP_K: on
    background anchors the box is exp() of an arbitrary log size, where float32 kernels of two runtimes
    legitimately differ by ~0.05 px and nothing is ever drawn. Scores are probabilities, compared everywhere."""
    ref64 = ref.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - ref64)
    scaled = diff.copy()
    scaled[..., :4] /= float(max(input_size))
    score = ref64[..., 4] * ref64[..., 5:].max(-1)
    top = np.argsort(-score, axis=-1)[..., :BOX_TOP_K]  # an untrained model's best anchors count too
    relevant = score >= BOX_SCORE_FLOOR
    np.put_along_axis(relevant, top, True, axis=-1)
    scaled[..., :4][~relevant] = 0.0
    return float(diff.max()), float(scaled.max())


def near_ties(decoded: np.ndarray, score_thr: float, tol: float, nms_thr: float = 0.45) -> bool:
    """Whether float noise of size `tol` may change the final detections: a candidate score within tol of the
    threshold, or two overlapping (IoU > nms_thr) candidates of the same class whose scores are within tol
    (NMS keeps whichever ranks first)."""
    cls = decoded[:, 5:]
    labels = cls.argmax(1)
    scores = decoded[:, 4] * cls.max(1)
    if (np.abs(scores - score_thr) <= tol).any():
        return True
    keep = np.flatnonzero(scores >= score_thr)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:2000]
    if len(keep) < 2:
        return False
    s, lab = scores[keep], labels[keep]
    c = decoded[keep, :4]
    b = np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], 1)
    close = (np.abs(s[:, None] - s[None, :]) <= tol) & (lab[:, None] == lab[None, :])
    np.fill_diagonal(close, False)
    for i, j in zip(*np.nonzero(np.triu(close))):
        w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
        h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
        inter = w * h
        union = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
        if union > 0 and inter / union > nms_thr:
            return True
    return False


def check_parity(reference: TorchPredictor, onnx_path: str | Path, image: np.ndarray, atol: float = 1e-4,
                 e2e_path: str | Path | None = None) -> dict:
    """ONNX Runtime vs PyTorch (the torch predictor: raw head outputs decoded by cvpipe.vision, so the graph's
    own decode is checked too) on one BGR image: decoded outputs within `atol` (scores absolute, boxes in units
    of the input side, see output_diff) and the same final detections; the e2e graph (if given) must give the
    same detections too. Raises ParityError, else returns {"max_abs_diff", "max_scaled_diff", "detections", ...}."""
    input_size, score_thr, nms_thr, max_det = (reference.input_size, reference.score_thr, reference.nms_thr,
                                               reference.max_det)
    x, r = letterbox(image, input_size)
    ref = reference.decoded(x[None])
    got = ort_session(onnx_path).run(None, {INPUT_NAME: x[None]})[0]
    if got.shape != ref.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
    diff, scaled = output_diff(got, ref, input_size)
    result: dict[str, Any] = {"max_abs_diff": diff, "max_scaled_diff": scaled}
    if scaled > atol:
        raise ParityError(f"ONNX vs PyTorch decoded outputs differ by {diff:.3e} (scaled {scaled:.3e} > {atol})")
    hw = image.shape[:2]
    d_ref = postprocess(ref[0], r, score_thr, nms_thr, max_det, hw)
    d_onnx = postprocess(got[0], r, score_thr, nms_thr, max_det, hw)
    ok, detail = same_detections(d_onnx, d_ref)
    if not ok:
        tol = max(float(np.abs(got[0, :, 4:] - ref[0, :, 4:]).max()) * 10, 1e-6)
        if not near_ties(ref[0], score_thr, tol, nms_thr):
            raise ParityError(f"ONNX and PyTorch final detections differ: {detail}")
        # equal outputs up to float noise, but scores tied within that noise: NMS order is arbitrary
        detail = f"not comparable: {detail}, with candidate scores tied within {tol:.1e} (e.g. an untrained model)"
        log.warning("parity: final detections %s", detail)
    result.update({"detections": len(d_ref), "detections_detail": detail})
    if e2e_path is not None:
        result.update(check_e2e(e2e_path, image, input_size, d_onnx, decoded=got[0], score_thr=score_thr,
                                nms_thr=nms_thr))
    return result


def check_e2e(e2e_path: str | Path, image: np.ndarray, input_size, expected, decoded: np.ndarray | None = None,
              score_thr: float = 0.25, nms_thr: float = 0.45) -> dict:
    """The e2e graph's detections on the image equal `expected` (Detections from the numpy postprocess of the
    decoded output `decoded` [N, 5+C]); where that output has near-tied scores, a difference is only logged."""
    x, r = letterbox(image, (int(input_size[0]), int(input_size[1])))
    rows = ort_session(e2e_path).run(None, {INPUT_NAME: x[None]})[0]
    d_e2e = e2e_to_detections(rows, r, image.shape[:2])
    ok, detail = same_detections(d_e2e, expected)
    if not ok:
        if decoded is None or not near_ties(decoded, score_thr, 1e-6, nms_thr):
            raise ParityError(f"the end-to-end graph's detections differ from the numpy postprocess: {detail}")
        detail = f"not comparable: {detail}, with candidate scores tied within 1e-6 (e.g. an untrained model)"
        log.warning("e2e parity: %s", detail)
    return {"e2e_detections": len(d_e2e), "e2e_detail": detail}


def check_onnx_parity(reference_onnx: str | Path, candidate_onnx: str | Path, image: np.ndarray, input_size,
                      reference_raw: bool = False, atol: float = 1e-4) -> dict:
    """Two ONNX graphs on one image, decoded outputs compared (e.g. a slimmed graph vs the original, or a
    decode-appended BYO graph vs its raw original decoded in numpy)."""
    from cvpipe.vision import decode_raw

    x, _ = letterbox(image, (int(input_size[0]), int(input_size[1])))
    a = ort_session(reference_onnx).run(None, {INPUT_NAME: x[None]})[0]
    if reference_raw:
        a = decode_raw(a, tuple(input_size))
    b = ort_session(candidate_onnx).run(None, {INPUT_NAME: x[None]})[0]
    if a.shape != b.shape:
        raise ParityError(f"output shapes differ: {a.shape} vs {b.shape}")
    diff, scaled = output_diff(b, a, input_size)
    if scaled > atol:
        raise ParityError(f"ONNX graphs differ by {diff:.3e} (scaled {scaled:.3e} > {atol})")
    return {"max_abs_diff": diff, "max_scaled_diff": scaled}


def simplify(path: str | Path, image: np.ndarray, input_size, atol: float = 1e-4) -> dict:
    """onnxslim the graph in place, kept only if it still matches the original on the image."""
    try:
        import onnxslim
    except ImportError:
        return {"simplified": False, "reason": "onnxslim is not installed"}
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        slim_path = Path(tmp) / "slim.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
                onnxslim.slim(str(path), str(slim_path))
            res = check_onnx_parity(path, slim_path, image, input_size, atol=atol)
        except Exception as e:  # a failed simplification keeps the original graph
            log.warning("onnxslim result not kept: %s", e)
            return {"simplified": False, "reason": f"{type(e).__name__}: {e}"}
        before, after = path.stat().st_size, slim_path.stat().st_size
        slim_path.replace(path)
    return {"simplified": True, "bytes_before": before, "bytes_after": after, **res}


def load_trained(path: str | Path, scale: str | None = None):
    """(model in eval mode, LoadResult) of any YOLOX checkpoint, fused (deploy) weights included."""
    from cvpipe.models.yolox import CheckpointError, load_model
    from cvpipe.models.yolox.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    found = ckpt.get("meta") if isinstance(ckpt, dict) else None
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        return load_model(ckpt, scale=scale, fused=bool(meta.get("fused", False)))
    except CheckpointError as e:
        if "fused" not in str(e):
            raise
        return load_model(ckpt, scale=scale, fused=not meta.get("fused", False))
