"""The model training starts from: a YOLOX of the asked scale with pretrained weights (or none)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cvpipe.inference.coco_classes import COCO_CLASS_NAMES as COCO_CLASSES  # class order of COCO weights

log = logging.getLogger(__name__)

NANO_ONNX = Path("weights") / "yolox_nano" / "yolox_nano.onnx"


def coco_rows(class_names: list[str] | None) -> list[int] | None:
    """Row of each class in the COCO-80 predictors when every name is a COCO class (else None)."""
    if not class_names or not set(class_names) <= set(COCO_CLASSES):
        return None
    return [COCO_CLASSES.index(n) for n in class_names]


@torch.no_grad()
def keep_class_rows(model: nn.Module, rows: list[int]) -> None:
    """Shrink the class predictors of a COCO-80 model to `rows` (in that order), keeping their trained weights."""
    head = model.head
    old = [(c.weight.clone(), c.bias.clone()) for c in head.cls_preds]
    head.reset_cls_preds(len(rows))
    idx = torch.as_tensor(rows)
    for conv, (w, b) in zip(head.cls_preds, old):
        conv.weight.copy_(w[idx])
        conv.bias.copy_(b[idx])


def find_nano_onnx() -> Path:
    """The shipped YOLOX-Nano ONNX: under the working directory, else beside the installed package."""
    import cvpipe

    candidates = [Path.cwd() / NANO_ONNX, Path(cvpipe.__file__).resolve().parent.parent / NANO_ONNX,
                  Path(cvpipe.__file__).resolve().parent / NANO_ONNX]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError("YOLOX-Nano ONNX weights not found; looked at " + ", ".join(map(str, candidates)) +
                            ". Run from the repository root or give pretrained as a path")


def build_model(scale: str, num_classes: int, pretrained: str, required: bool = False,
                class_names: list[str] | None = None) -> tuple[nn.Module, dict]:
    """(model, info) where info tells what was loaded: {"pretrained", "weights", "loaded", "reinitialized", "fused"}.

    With the COCO weights ("coco", "nano-onnx") and a dataset whose classes are all COCO classes (by name) but
    fewer, the class predictors keep the trained rows of those classes instead of starting afresh.
    """
    from cvpipe.models.yolox import build_yolox, load_checkpoint
    from cvpipe.models.yolox.weights import DEFAULT_WEIGHTS, resolve_weights

    spec = (pretrained or "none").strip()
    rows = coco_rows(class_names) if spec.lower() in ("coco", "nano-onnx") and num_classes != 80 else None
    if rows is not None and len(rows) != num_classes:
        rows = None
    info: dict = {"pretrained": spec, "weights": None, "loaded": False, "reinitialized": [], "fused": False}
    is_onnx = spec.lower() == "nano-onnx" or spec.lower().endswith(".onnx")
    if is_onnx:
        from cvpipe.models.yolox.onnx_import import load_nano_from_onnx

        if scale != "nano":
            raise ValueError(f"ONNX weights {spec!r} are YOLOX-Nano weights; set scale: nano (got {scale!r})")
        path = find_nano_onnx() if spec.lower() == "nano-onnx" else Path(spec).expanduser()
        model = load_nano_from_onnx(path, num_classes=80)  # the export's own class count
        if rows is not None:
            keep_class_rows(model, rows)
            info["class_rows"] = rows
            log.info("kept the COCO class predictor rows of the dataset's %d classes", num_classes)
        elif num_classes != 80:
            log.warning("nano ONNX has 80 classes, the dataset %d: re-initialising the class predictors", num_classes)
            model.head.reset_cls_preds(num_classes)
            info["reinitialized"] = [f"head.cls_preds.{i}" for i in range(len(model.head.cls_preds))]
        info.update(weights=str(path), loaded=True, fused=True)
        log.info("starting from the fused (BN-folded) YOLOX-Nano of %s: no BatchNorm to train or freeze", path)
        return model.train(), info

    model = build_yolox(scale, 80 if rows is not None else num_classes)
    if spec.lower() == "none":
        log.info("YOLOX-%s from random initialisation", scale)
        return model, info
    source = DEFAULT_WEIGHTS[scale] if spec.lower() == "coco" else spec
    path = resolve_weights(source, required=required)
    if path is None:  # offline / unreachable and not required: resolve_weights has warned
        info["weights"] = source
        return (build_yolox(scale, num_classes) if rows is not None else model), info
    result = load_checkpoint(model, path)
    if rows is not None:
        keep_class_rows(model, rows)
        info["class_rows"] = rows
        log.info("kept the COCO class predictor rows of the dataset's %d classes", num_classes)
    info.update(weights=str(path), loaded=True, reinitialized=list(result.reinitialized), layout=result.layout)
    log.info("YOLOX-%s loaded from %s (%s layout)%s", scale, path, result.layout,
             f"; re-initialised {len(result.reinitialized)} tensors" if result.reinitialized else "")
    return model, info
