"""The model training starts from: a YOLOX of the asked scale with pretrained weights (or none)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from cvpipe.inference.coco_classes import COCO_CLASS_NAMES as COCO_CLASSES  # class order of COCO weights
from cvpipe.models.pretrained_files import find_nano_onnx
from cvpipe.models.yolox.weights import sha256_of

if TYPE_CHECKING:  # imported lazily at run time, like the builders below
    from cvpipe.models.yolox import YOLOX

log = logging.getLogger(__name__)


def coco_rows(class_names: list[str] | None) -> list[int] | None:
    """Row of each class in the COCO-80 predictors when every name is a COCO class (else None)."""
    if not class_names or not set(class_names) <= set(COCO_CLASSES):
        return None
    return [COCO_CLASSES.index(n) for n in class_names]


@torch.no_grad()
def keep_class_rows(model: YOLOX, rows: list[int]) -> None:
    """Shrink the class predictors of a COCO-80 model to `rows` (in that order), keeping their trained weights."""
    head = model.head
    old = [(c.weight.clone(), cast(torch.Tensor, c.bias).clone()) for c in cast(list[nn.Conv2d], head.cls_preds)]
    head.reset_cls_preds(len(rows))
    idx = torch.as_tensor(rows)
    for conv, (w, b) in zip(cast(list[nn.Conv2d], head.cls_preds), old):
        conv.weight.copy_(w[idx])
        cast(torch.Tensor, conv.bias).copy_(b[idx])


def build_model(scale: str, num_classes: int, pretrained: str, required: bool = True,
                class_names: list[str] | None = None, calibration: Iterable[torch.Tensor] | None = None,
                keep_fused: bool = False) -> tuple[YOLOX, dict]:
    """(model, info): info says where training starts -- {"source" (as given), "path", "sha256", "loaded",
    "layout", "fused", "reinitialized", "class_rows"?} -- so an evaluation can score the same start.

    A source that cannot be had raises (WeightsUnavailable / FileNotFoundError) unless `required` is False, when
    the model starts from random weights with a warning. A BN-folded start (the nano ONNX) is un-folded into a
    trainable BatchNorm model with statistics re-estimated on `calibration` (image batches) unless `keep_fused`.
    With COCO weights ("coco", "nano-onnx") and a dataset whose classes are all COCO classes (by name) but fewer,
    the class predictors keep the trained rows of those classes instead of starting afresh.
    """
    from cvpipe.models.yolox import build_yolox

    spec = (pretrained or "none").strip()
    rows = coco_rows(class_names) if spec.lower() in ("coco", "nano-onnx") and num_classes != 80 else None
    if rows is not None and len(rows) != num_classes:
        rows = None
    info: dict = {"source": spec, "path": None, "sha256": None, "loaded": False, "layout": None, "fused": False,
                  "reinitialized": []}
    if spec.lower() == "none":
        log.info("YOLOX-%s from random initialisation (pretrained: none)", scale)
        return build_yolox(scale, num_classes), info
    model: YOLOX | None
    if spec.lower() == "nano-onnx" or spec.lower().endswith(".onnx"):
        model = _from_nano_onnx(spec, scale, info, calibration, keep_fused)
    else:
        model = _from_checkpoint(spec, scale, info, required)
        if model is None:
            return build_yolox(scale, num_classes), info
    if info["path"]:
        info["sha256"] = sha256_of(Path(info["path"]))
    _fit_classes(model, num_classes, rows, info)
    info["knows_classes"] = knows_classes(spec, class_names, info)
    return model.train(), info


def knows_classes(spec: str, class_names: list[str] | None, info: dict) -> bool:
    """Whether the loaded start already predicts every class of the data, each from its own trained row: COCO
    weights and COCO class names (all 80, or a subset whose rows were kept), or a checkpoint whose saved class
    list is the data's."""
    if not info["loaded"] or not class_names:
        return False
    if spec.lower() in ("coco", "nano-onnx"):
        return "class_rows" in info or list(class_names) == list(COCO_CLASSES)
    return info.get("class_names") == list(class_names)


def resolve_freeze_backbone(setting: bool | str, info: dict) -> bool:
    """freeze_backbone as trained: "auto" = frozen when the start knows every class of the data (fine-tuning every
    layer on known classes pulled the backbone away from what it knew: docs/training.md)."""
    return bool(info.get("knows_classes")) if setting == "auto" else bool(setting)


def _from_checkpoint(spec: str, scale: str, info: dict, required: bool) -> YOLOX | None:
    """The COCO checkpoint of the scale ("coco"), or a path / URL, loaded into a YOLOX of its own class count."""
    from cvpipe.models.yolox import build_yolox, load_checkpoint
    from cvpipe.models.yolox.checkpoints import detect_layout, infer_architecture, read_checkpoint
    from cvpipe.models.yolox.weights import DEFAULT_WEIGHTS, resolve_weights

    source = DEFAULT_WEIGHTS[scale] if spec.lower() == "coco" else spec
    info["source"] = source if spec.lower() != "coco" else f"coco ({source})"
    try:
        path = resolve_weights(source, required=required)
    except FileNotFoundError:
        if required:
            raise
        path = None
    if path is None:
        log.warning("pretrained weights %s cannot be had: YOLOX-%s starts from RANDOM weights "
                    "(pretrained_required: false)", source, scale)
        return None
    ckpt = read_checkpoint(path)
    ckpt_scale, ckpt_classes = infer_architecture(detect_layout(ckpt)[1])
    if ckpt_scale != scale:
        raise ValueError(f"{path} holds YOLOX-{ckpt_scale} weights but scale is {scale!r}; set scale: {ckpt_scale}")
    model = build_yolox(scale, ckpt_classes)
    result = load_checkpoint(model, ckpt)
    info.update(path=str(path), loaded=True, layout=result.layout, skipped=list(getattr(result, "skipped", [])))
    saved_classes = (ckpt.get("meta") or {}).get("class_names") if isinstance(ckpt.get("meta"), dict) else None
    if saved_classes:  # a cvpipe checkpoint says which classes its rows predict
        info["class_names"] = list(saved_classes)
    log.info("YOLOX-%s loaded from %s (%s layout, %d classes)", scale, path, result.layout, ckpt_classes)
    return model


def _from_nano_onnx(spec: str, scale: str, info: dict, calibration, keep_fused: bool) -> YOLOX:
    from cvpipe.models.yolox import unfuse_model
    from cvpipe.models.yolox.onnx_import import load_nano_from_onnx

    if scale != "nano":
        raise ValueError(f"ONNX weights {spec!r} are YOLOX-Nano weights; set scale: nano (got {scale!r})")
    path = find_nano_onnx() if spec.lower() == "nano-onnx" else Path(spec).expanduser()
    model = load_nano_from_onnx(path, num_classes=80)  # the export's own class count
    info.update(path=str(path), loaded=True, layout="onnx", fused=keep_fused)
    if keep_fused:
        log.info("starting from the fused (BN-folded) YOLOX-Nano of %s: only its head can be trained", path)
        return model
    batches = list(calibration or [])
    model = unfuse_model(model, batches)
    info["bn_calibration_images"] = sum(int(b.shape[0]) for b in batches)
    log.info("YOLOX-Nano of %s un-folded into BatchNorm form (statistics from %d images)", path,
             info["bn_calibration_images"])
    return model


def _fit_classes(model: YOLOX, num_classes: int, rows: list[int] | None, info: dict) -> None:
    """Keep the COCO rows of the dataset's classes, or fresh class predictors for other classes."""
    if rows is not None:
        keep_class_rows(model, rows)
        info["class_rows"] = rows
        log.info("kept the COCO class predictor rows of the dataset's %d classes", num_classes)
    elif num_classes != model.num_classes:
        log.info("pretrained model has %d classes, the dataset %d: fresh class predictors", model.num_classes,
                 num_classes)
        model.head.reset_cls_preds(num_classes)
        info["reinitialized"] = [f"head.cls_preds.{i}" for i in range(len(model.head.cls_preds))]
