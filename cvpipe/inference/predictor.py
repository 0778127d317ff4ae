"""Predictor of a packed model dir (or any decoded / raw YOLOX ONNX file or OpenVINO IR). numpy only, no torch.

    pred = Predictor.from_dir("path/to/model")  # the pack's default variant (model.json)
    pred = Predictor.from_dir("path/to/model", variant="openvino")  # or "fp32", "int8", "openvino_int8"
    det = pred.predict(image_bgr)  # Detections in original-image pixels
    pred.to_json(det)              # [{"box": [x1,y1,x2,y2], "score", "category_id", "category_name"}]

Every variant runs behind the same pre- and post-processing (cvpipe.vision letterbox, decode, NMS); only the
backend (cvpipe.inference.runtimes) differs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvpipe.inference.packed import PackedModel, PackedModelError
from cvpipe.inference.runtimes import backend_available, make_session, open_runtime  # noqa: F401 - make_session
from cvpipe.vision import Detections, decode_image, decode_raw, letterbox, postprocess

log = logging.getLogger(__name__)


class Predictor:
    """Letterbox -> ONNX model -> score filter + per-class NMS -> boxes in original pixels.

    The ONNX model takes [B, 3, H, W] float32 BGR 0..255 (letterbox top-left, pad 114) and returns decoded
    predictions [B, N, 5+C] (cx, cy, w, h in input px, obj, class probs), or raw ones (dx, dy, log w, log h,
    obj, cls) when `raw_outputs`. A model with a fixed batch of 1 is run image by image in predict_batch.
    `backend` "openvino" opens an OpenVINO IR (.xml) or ONNX file with OpenVINO instead of ONNX Runtime.
    """

    def __init__(self, onnx_path: str | Path, class_names: Sequence[str], category_ids: Sequence[int] | None,
                 input_size: Sequence[int], raw_outputs: bool = False, score_thr: float = 0.25,
                 nms_thr: float = 0.45, max_det: int = 300, intra_op_threads: int = 1,
                 max_pixels: int | None = None, backend: str = "onnxruntime", variant: str = "fp32"):
        self.onnx_path = Path(onnx_path)  # the model file the backend opens (an .xml for OpenVINO IR)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"model file {self.onnx_path} does not exist")
        self.class_names = [str(c) for c in class_names]
        self.category_ids = [int(c) for c in category_ids] if category_ids is not None \
            else list(range(len(self.class_names)))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.category_ids)} category ids")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.raw_outputs = raw_outputs
        self.score_thr, self.nms_thr, self.max_det = float(score_thr), float(nms_thr), int(max_det)
        self.max_pixels = max_pixels
        self.backend, self.variant = backend, variant
        self.runtime = open_runtime(backend, self.onnx_path, intra_op_threads)
        self.fixed_batch = self.runtime.fixed_batch
        n_out = self.runtime.output_width
        if n_out is not None and n_out != 5 + len(self.class_names):
            raise ValueError(f"{self.onnx_path.name} outputs {n_out} values per box, which means {n_out - 5} "
                             f"classes, but {len(self.class_names)} class names were given")

    @classmethod
    def from_dir(cls, model_dir: str | Path | PackedModel, variant: str | None = None, intra_op_threads: int = 1,
                 **overrides) -> Predictor:
        """A packed model dir (PackedModel.load: classes, input size, thresholds, variants).

        variant: None = the pack's default variant, falling back to fp32 (with a warning) where the default's
        backend is not installed here; a name ("fp32", "int8", "openvino", "openvino_int8") = exactly that
        one, or PackedModelError (refused at pack time, not packed, or files missing)."""
        packed = model_dir if isinstance(model_dir, PackedModel) else PackedModel.load(model_dir)
        chosen = packed.variant(variant) if variant is not None else default_or_fp32(packed)
        classes, thr = packed.classes, packed.thresholds
        kwargs = dict(class_names=classes.names, category_ids=classes.category_ids, input_size=packed.input_size,
                      raw_outputs=False, intra_op_threads=intra_op_threads, backend=chosen.backend,
                      variant=chosen.name, **thr)
        kwargs.update(overrides)
        return cls(chosen.path, **kwargs)

    @property
    def session(self):
        """The ONNX Runtime session (ORT backends only)."""
        return getattr(self.runtime, "session", None)

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
        out = self.runtime.run(batch)
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


def default_or_fp32(packed: PackedModel):
    """The pack's default variant; fp32 (with a warning) where the default cannot run here: its backend is not
    installed, or a copy of the pack (e.g. an older Bento) left its files out. fp32 is certified too."""
    try:
        chosen = packed.variant(None)
    except PackedModelError as e:
        log.warning("the pack's default variant cannot be loaded (%s): serving fp32", e)
        return packed.variant("fp32")
    if not backend_available(chosen.backend):
        log.warning("the pack's default variant %r needs %s, which is not installed: serving fp32",
                    chosen.name, chosen.backend)
        return packed.variant("fp32")
    return chosen


def detections_to_json(det: Detections, class_names: Sequence[str], category_ids: Sequence[int]) -> list[dict]:
    """Detections -> JSON-able list, highest score first; boxes xyxy original px (3 decimals)."""
    order = np.argsort(-det.scores, kind="stable")
    out = []
    for i in order:
        label = int(det.labels[i])
        out.append({"box": [round(float(v), 3) for v in det.boxes[i]], "score": round(float(det.scores[i]), 6),
                    "category_id": int(category_ids[label]), "category_name": str(class_names[label])})
    return out
