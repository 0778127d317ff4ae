"""ONNX Runtime predictor of a packed model dir (or any decoded / raw YOLOX ONNX file). numpy only, no torch.

    pred = Predictor.from_dir("path/to/model")          # model.onnx + model.json
    det = pred.predict(image_bgr)                        # Detections in original-image pixels
    pred.to_json(det)                                    # [{"box": [x1,y1,x2,y2], "score", "category_id", "category_name"}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cvpipe.vision import decode_image
from cvpipe.vision import Detections, decode_raw, letterbox, postprocess


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


class Predictor:
    """Letterbox -> ONNX model -> score filter + per-class NMS -> boxes in original pixels.

    The ONNX model takes [B, 3, H, W] float32 BGR 0..255 (letterbox top-left, pad 114) and returns decoded
    predictions [B, N, 5+C] (cx, cy, w, h in input px, obj, class probs), or raw ones (dx, dy, log w, log h,
    obj, cls) when `raw_outputs`. A model with a fixed batch of 1 is run image by image in predict_batch.
    """

    def __init__(self, onnx_path: str | Path, class_names: Sequence[str], category_ids: Sequence[int] | None,
                 input_size: Sequence[int], raw_outputs: bool = False, score_thr: float = 0.25,
                 nms_thr: float = 0.45, max_det: int = 300, intra_op_threads: int = 1,
                 max_pixels: int | None = None):
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model {self.onnx_path} does not exist")
        self.class_names = [str(c) for c in class_names]
        self.category_ids = [int(c) for c in category_ids] if category_ids is not None \
            else list(range(len(self.class_names)))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.category_ids)} category ids")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.raw_outputs = raw_outputs
        self.score_thr, self.nms_thr, self.max_det = float(score_thr), float(nms_thr), int(max_det)
        self.max_pixels = max_pixels
        self.session = make_session(self.onnx_path, intra_op_threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        out = self.session.get_outputs()[0]
        n_out = out.shape[-1]
        if isinstance(n_out, int) and n_out != 5 + len(self.class_names):
            raise ValueError(f"{self.onnx_path.name} outputs {n_out} values per box, which means {n_out - 5} "
                             f"classes, but {len(self.class_names)} class names were given")

    @classmethod
    def from_dir(cls, model_dir: str | Path, intra_op_threads: int = 1, **overrides) -> "Predictor":
        """A packed model dir: model.onnx (decoded outputs) + model.json (classes, input size, thresholds)."""
        model_dir = Path(model_dir)
        meta_path = model_dir / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a packed model dir: no model.json")
        meta = json.loads(meta_path.read_text())
        kwargs = dict(class_names=meta["class_names"], category_ids=meta.get("category_ids"),
                      input_size=meta["input_size"], raw_outputs=False,
                      score_thr=meta.get("score_thr", 0.25), nms_thr=meta.get("nms_thr", 0.45),
                      max_det=meta.get("max_det", 300), intra_op_threads=intra_op_threads)
        kwargs.update(overrides)
        return cls(model_dir / meta.get("onnx", "model.onnx"), **kwargs)

    # --- core -------------------------------------------------------------------------------------------
    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3 \
                or image_bgr.dtype != np.uint8:
            raise ValueError("expected an H x W x 3 uint8 BGR image")
        return letterbox(image_bgr, self.input_size)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] float32 -> decoded [B, N, 5+C]."""
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return np.concatenate([self.run(batch[i:i + 1]) for i in range(batch.shape[0])])
        out = self.session.run(None, {self.input_name: batch})[0]
        return decode_raw(out, self.input_size) if self.raw_outputs else out

    def postprocess(self, decoded: np.ndarray, scale: float, image_hw: tuple[int, int],
                    score_thr: float | None = None) -> Detections:
        det = postprocess(decoded, scale, self.score_thr if score_thr is None else float(score_thr), self.nms_thr,
                          self.max_det, image_hw)
        det.image_size = (int(image_hw[0]), int(image_hw[1]))
        return det

    def predict(self, image_bgr: np.ndarray, score_thr: float | None = None) -> Detections:
        x, r = self.preprocess(image_bgr)
        return self.postprocess(self.run(x[None])[0], r, image_bgr.shape[:2], score_thr)

    def predict_batch(self, images: Sequence[np.ndarray], score_thr: float | None = None) -> list[Detections]:
        if not images:
            return []
        prepped = [self.preprocess(im) for im in images]
        decoded = self.run(np.stack([x for x, _ in prepped]))
        return [self.postprocess(d, r, im.shape[:2], score_thr) for d, (_, r), im in zip(decoded, prepped, images)]

    def predict_bytes(self, data: bytes, score_thr: float | None = None) -> Detections:
        """Encoded image bytes -> detections (ImageDecodeError for unusable bytes); det.image_size is (h, w)."""
        image = decode_image(data) if self.max_pixels is None else decode_image(data, self.max_pixels)
        return self.predict(image, score_thr)

    # --- output ------------------------------------------------------------------------------------------
    def to_json(self, det: Detections) -> list[dict]:
        return detections_to_json(det, self.class_names, self.category_ids)


def detections_to_json(det: Detections, class_names: Sequence[str], category_ids: Sequence[int]) -> list[dict]:
    """Detections -> JSON-able list, highest score first; boxes xyxy original px (3 decimals)."""
    order = np.argsort(-det.scores, kind="stable")
    out = []
    for i in order:
        label = int(det.labels[i])
        out.append({"box": [round(float(v), 3) for v in det.boxes[i]], "score": round(float(det.scores[i]), 6),
                    "category_id": int(category_ids[label]), "category_name": str(class_names[label])})
    return out
