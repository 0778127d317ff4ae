"""Save and load YOLOX weights in three layouts.

- "cvpipe": {"model": state_dict, "meta": {...}, "optimizer"?: ..., "extra"?: ...}; keys are ours.
- "megvii": {"model": state_dict, ...} as Megvii's YOLOX trainer writes; our keys are Megvii's keys.
- "mmdet":  {"state_dict": ..., "meta": ..., "optimizer"?: ...}; keys backbone.* / neck.* / bbox_head.*, mapped
  module by module (mmdetection splits Megvii's PAFPN into backbone + neck and moves the head stems into the neck).

Every tensor is placed by name with its shape checked; anything left over on either side is an error that
lists the keys. A different class count only re-initialises the class predictors.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import CSPLayer, DWConv
from .model import YOLOX, build_yolox, fuse_model

log = logging.getLogger(__name__)

LAYOUTS = ("cvpipe", "megvii", "mmdet")
FORMAT_TAG = "cvpipe-yolox"

# our (= Megvii) module prefix -> mmdetection module prefix
MMDET_PREFIXES = {
    "backbone.backbone.stem": "backbone.stem",
    "backbone.backbone.dark2": "backbone.stage1",
    "backbone.backbone.dark3": "backbone.stage2",
    "backbone.backbone.dark4": "backbone.stage3",
    "backbone.backbone.dark5": "backbone.stage4",
    "backbone.lateral_conv0": "neck.reduce_layers.0",
    "backbone.C3_p4": "neck.top_down_blocks.0",
    "backbone.reduce_conv1": "neck.reduce_layers.1",
    "backbone.C3_p3": "neck.top_down_blocks.1",
    "backbone.bu_conv2": "neck.downsamples.0",
    "backbone.C3_n3": "neck.bottom_up_blocks.0",
    "backbone.bu_conv1": "neck.downsamples.1",
    "backbone.C3_n4": "neck.bottom_up_blocks.1",
    "head.stems": "neck.out_convs",
    "head.cls_convs": "bbox_head.multi_level_cls_convs",
    "head.reg_convs": "bbox_head.multi_level_reg_convs",
    "head.cls_preds": "bbox_head.multi_level_conv_cls",
    "head.reg_preds": "bbox_head.multi_level_conv_reg",
    "head.obj_preds": "bbox_head.multi_level_conv_obj",
}
# child renames inside a module of the given type (mmdet's CSPLayer / DepthwiseSeparableConvModule)
MMDET_CHILD_NAMES = {
    CSPLayer: {"conv1": "main_conv", "conv2": "short_conv", "conv3": "final_conv", "m": "blocks"},
    DWConv: {"dconv": "depthwise_conv", "pconv": "pointwise_conv"},
}
# keys in mmdetection checkpoints that carry no model weights of ours
MMDET_IGNORED_PREFIXES = ("ema_", "data_preprocessor.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadResult:
    layout: str
    meta: dict = field(default_factory=dict)
    reinitialized: list[str] = field(default_factory=list)  # model keys left freshly initialised
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    skipped: list[str] = field(default_factory=list)  # objects of foreign classes not unpickled (runner state)
    optimizer: dict | None = None
    extra: Any = None


def mmdet_key(model: nn.Module, key: str) -> str:
    """mmdetection's name for one of our state_dict keys."""
    for ours, theirs in MMDET_PREFIXES.items():
        if key.startswith(ours + "."):
            module = model.get_submodule(ours)
            out = [theirs]
            rest = key[len(ours) + 1:].split(".")
            for i, part in enumerate(rest):
                if i == len(rest) - 1:  # parameter / buffer name
                    out.append(part)
                    break
                out.append(MMDET_CHILD_NAMES.get(type(module), {}).get(part, part))
                module = module.get_submodule(part)
            return ".".join(out)
    raise KeyError(f"no mmdetection name for {key!r}")


def mmdet_key_map(model: nn.Module) -> dict[str, str]:
    """{our key: mmdetection key} for every entry of the model's state_dict."""
    return {k: mmdet_key(model, k) for k in model.state_dict()}


def _to_builtin(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"meta value of type {type(obj).__name__} cannot be stored in a checkpoint")


def _plain(meta: Mapping | None) -> dict:
    """meta as plain JSON types, so it loads with torch.load(weights_only=True)."""
    return json.loads(json.dumps(dict(meta or {}), default=_to_builtin))


def save_checkpoint(model: YOLOX, path: str | Path, meta: Mapping | None = None, layout: str = "cvpipe",
                    optimizer: torch.optim.Optimizer | Mapping | None = None, extra: Any = None) -> Path:
    """Write the model (and optionally optimizer state / extra tensors) atomically; returns the path.

    meta: scale, num_classes, class_names, category_ids, input_size, epoch, metrics, ... (JSON-able; scale,
    num_classes and fused are filled in from the model). `extra` must hold only tensors and plain types.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; choose one of {LAYOUTS}")
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = _plain(meta)
    meta.update(format=FORMAT_TAG, scale=model.scale, num_classes=model.num_classes, fused=model.fused)
    opt_state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if layout == "cvpipe":
        ckpt: dict = {"model": state, "meta": meta}
    elif layout == "megvii":
        ckpt = {"model": state, "start_epoch": int(meta.get("epoch", 0))}
    else:
        names = mmdet_key_map(model)
        mm_meta = dict(meta, epoch=int(meta.get("epoch", 0)))
        if "class_names" in meta:
            mm_meta["CLASSES"] = list(meta["class_names"])
            mm_meta["dataset_meta"] = {"classes": list(meta["class_names"])}
        ckpt = {"meta": mm_meta, "state_dict": {names[k]: v for k, v in state.items()}}
    if opt_state is not None:
        ckpt["optimizer"] = opt_state
    if extra is not None:
        ckpt["extra"] = extra
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(src: str | Path, skipped: list[str] | None = None) -> dict:
    """torch.load a checkpoint file without running code from it, with clear errors.

    Plain checkpoints (tensors, containers, numbers, strings) load with torch.load(weights_only=True). Training
    runner checkpoints (mmengine / mmdetection 3.x: `message_hub` with HistoryBuffer objects, optimizer,
    param_schedulers, ...) hold objects of other classes: each such class is replaced by an inert stub that
    takes no action when built, still under the weights-only unpickler, and every stubbed object is dropped from
    the result. What was dropped ("key.path (module.Class)") is logged and appended to `skipped`.
    """
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, foreign classes inside, not a torch file, ...
        ckpt = _load_stubbing_foreign_classes(path, e)
        dropped: list[str] = []
        ckpt = _drop_stubs(ckpt, "", dropped)
        log.info("%s: kept tensors and plain containers; skipped %d objects of other classes: %s", path.name,
                 len(dropped), _shorten(dropped, 8))
        if skipped is not None:
            skipped += dropped
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


class _Stub:
    """Stands in for a class a checkpoint names but we do not trust: building it does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _stub_class(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (_Stub,), {"__module__": module, "__qualname__": name})


def _load_stubbing_foreign_classes(path: Path, first_error: Exception):
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        names = []
    if not names:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (torch.load weights_only): "
                              f"{first_error}") from first_error
    stubs: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [_stub_class(n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint even with its {len(names)} foreign "
                              f"classes ({', '.join(names[:5])}) stubbed: {e}") from e


def _drop_stubs(obj, where: str, dropped: list[str]):
    """obj without stub instances (dict entries removed, list items None); `dropped` gets their places."""
    if isinstance(obj, _Stub):
        dropped.append(f"{where or '<root>'} ({type(obj).__module__}.{type(obj).__qualname__})")
        return None
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else {}
        for k, v in obj.items():
            kept = _drop_stubs(v, f"{where}.{k}" if where else str(k), dropped)
            if kept is not None or not isinstance(v, _Stub):
                out[k] = kept
        return out
    if isinstance(obj, (list, tuple)):
        items = [_drop_stubs(v, f"{where}[{i}]", dropped) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _is_state_dict(d) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def detect_layout(ckpt: Mapping) -> tuple[str, dict]:
    """(layout, state_dict) of a loaded checkpoint or bare state_dict."""
    if "state_dict" in ckpt and _is_state_dict(ckpt["state_dict"]):
        sd, container = dict(ckpt["state_dict"]), "state_dict"
    elif "model" in ckpt and _is_state_dict(ckpt["model"]):
        sd, container = dict(ckpt["model"]), "model"
    elif _is_state_dict(ckpt):
        sd, container = dict(ckpt), None
    else:
        raise CheckpointError(f"unknown checkpoint structure: top-level keys {sorted(map(str, ckpt))[:10]}; "
                              "expected {'model': state_dict} (cvpipe / Megvii) or {'state_dict': ...} (mmdetection)")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith(("neck.", "bbox_head.")) for k in sd):
        return "mmdet", sd
    if any(k.startswith(("backbone.backbone.", "head.")) for k in sd):
        meta = ckpt.get("meta") if container == "model" else None
        return ("cvpipe" if isinstance(meta, Mapping) and meta.get("format") == FORMAT_TAG else "megvii"), sd
    raise CheckpointError(f"state_dict keys look like neither YOLOX layout (e.g. {list(sd)[:5]}); expected "
                          "backbone.backbone.* / head.* (cvpipe, Megvii) or backbone.* / neck.* / bbox_head.* "
                          "(mmdetection)")


def _shorten(keys, n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_checkpoint(model: YOLOX, src: str | Path | Mapping, layout: str = "auto",
                    strict_shapes: bool = True) -> LoadResult:
    """Load a cvpipe / Megvii / mmdetection checkpoint (file path, loaded dict, or bare state_dict) into `model`.

    Class predictors whose class count differs from the model's are re-initialised (logged); any other
    missing, unexpected or (with strict_shapes) shape-mismatched tensor raises CheckpointError listing them.
    A fused model accepts unfused weights (they are BN-folded on the way in). A Megvii YOLOX-Nano ONNX export
    (a path ending in .onnx) loads into a nano model too, unfused into neutral BatchNorms when the model has them.
    """
    if isinstance(src, (str, Path)) and str(src).lower().endswith(".onnx"):
        return _load_onnx(model, Path(src))
    skipped: list[str] = []
    ckpt = read_checkpoint(src, skipped) if isinstance(src, (str, Path)) else src
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"expected a checkpoint dict, got {type(ckpt).__name__}")
    found, sd = detect_layout(ckpt)
    if layout != "auto":
        if layout not in LAYOUTS:
            raise ValueError(f"unknown checkpoint layout {layout!r}; choose 'auto' or one of {LAYOUTS}")
        if (layout == "mmdet") != (found == "mmdet"):
            raise CheckpointError(f"checkpoint looks like layout {found!r}, not {layout!r}")
        found = layout if found != "mmdet" else found
    meta = dict(ckpt.get("meta") or {}) if isinstance(ckpt.get("meta"), Mapping) else {}
    result = LoadResult(layout=found, meta=meta, optimizer=ckpt.get("optimizer"), extra=ckpt.get("extra"),
                        skipped=skipped)

    if found == "mmdet":
        sd = _drop_mmdet_extras(sd, result)
    ckpt_fused = not any(".bn." in k for k in sd)
    if model.fused and not ckpt_fused:  # fold BN on the way in
        plain = build_yolox(model.scale, model.num_classes, fused=False)
        inner = load_checkpoint(plain, {"model": _to_ours(plain, sd, found)}, strict_shapes=strict_shapes)
        model.load_state_dict(fuse_model(plain.eval()).state_dict())
        result.reinitialized, result.ignored = inner.reinitialized, result.ignored + inner.ignored
        return result

    sd = _to_ours(model, sd, found)
    _check_keys(model, sd, found, ckpt_fused)
    sd = _fit_class_count(model, sd, result)
    sd = _drop_mismatched(model, sd, result, found, strict_shapes)
    merged = dict(model.state_dict())
    merged.update(sd)
    model.load_state_dict(merged, strict=True)
    return result


def _drop_mmdet_extras(sd: dict, result: LoadResult) -> dict:
    ignored = [k for k in sd if k.startswith(MMDET_IGNORED_PREFIXES)]
    if ignored:
        log.info("ignoring %d non-model keys of the mmdetection checkpoint (EMA buffers / preprocessor)", len(ignored))
    result.ignored += ignored
    return {k: v for k, v in sd.items() if k not in set(ignored)}


def _check_keys(model: YOLOX, sd: dict, layout: str, ckpt_fused: bool) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        hint = " (fused/deploy weights into an unfused model?)" if ckpt_fused and not model.fused else ""
        raise CheckpointError(f"checkpoint ({layout}) does not fit YOLOX-{model.scale}{hint}: "
                              f"missing [{_shorten(missing)}]; unexpected [{_shorten(unexpected)}]")


def _fit_class_count(model: YOLOX, sd: dict, result: LoadResult) -> dict:
    """Class predictors of another class count are re-initialised (logged); the state_dict without them."""
    cls_keys = [k for k in model.state_dict() if k.startswith("head.cls_preds.")]
    ckpt_classes = sd[cls_keys[0]].shape[0] if cls_keys else model.num_classes
    if ckpt_classes == model.num_classes:
        return sd
    log.warning("checkpoint has %d classes, model %d: re-initialising the class predictors (%s); "
                "all other weights loaded", ckpt_classes, model.num_classes, ", ".join(cls_keys))
    model.head.reset_cls_preds(model.num_classes)
    result.reinitialized += cls_keys
    return {k: v for k, v in sd.items() if k not in set(cls_keys)}


def _drop_mismatched(model: YOLOX, sd: dict, result: LoadResult, layout: str, strict_shapes: bool) -> dict:
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if v.shape != own[k].shape]
    if not bad:
        return sd
    if strict_shapes:
        raise CheckpointError(f"shape mismatch loading {layout} checkpoint into YOLOX-{model.scale}: "
                              + "; ".join(bad[:12]))
    log.warning("skipping %d tensors with mismatched shapes: %s", len(bad), "; ".join(bad[:12]))
    skipped = [b.split(":")[0] for b in bad]
    result.reinitialized += skipped
    return {k: v for k, v in sd.items() if k not in set(skipped)}


def _load_onnx(model: YOLOX, path: Path) -> LoadResult:
    from .model import unfuse_model
    from .onnx_import import load_nano_from_onnx

    if model.scale != "nano":
        raise CheckpointError(f"{path.name}: ONNX weights load only into YOLOX-nano, not YOLOX-{model.scale}")
    imported = load_nano_from_onnx(path)
    source = imported if model.fused else unfuse_model(imported)
    result = load_checkpoint(model, {"model": source.state_dict()})
    result.layout = "onnx"
    return result


def _to_ours(model: nn.Module, sd: dict, layout: str) -> dict:
    """A checkpoint state_dict renamed to our keys (unknown mmdet keys keep their names, to be reported)."""
    if layout != "mmdet":
        return dict(sd)
    back = {v: k for k, v in mmdet_key_map(model).items()}
    return {back.get(k, k): v for k, v in sd.items()}


STEM_KEYS = ("backbone.backbone.stem.conv.conv.weight", "backbone.stem.conv.conv.weight")
CLS_KEYS = ("head.cls_preds.0.weight", "bbox_head.multi_level_conv_cls.0.weight")


def infer_architecture(sd: Mapping) -> tuple[str, int]:
    """(scale, num_classes) of a state_dict (our or mmdetection keys), from the stem width and class predictor."""
    from .model import SCALES

    stem = next((sd[k] for k in STEM_KEYS if k in sd), None)
    cls = next((sd[k] for k in CLS_KEYS if k in sd), None)
    if stem is None or cls is None:
        raise CheckpointError("cannot infer the YOLOX scale: no stem conv / class predictor weights in the checkpoint")
    by_width = {int(64 * s.width): name for name, s in SCALES.items()}
    width = stem.shape[0]
    if width not in by_width:
        raise CheckpointError(f"stem width {width} matches no YOLOX scale ({by_width})")
    return by_width[width], int(cls.shape[0])


def load_model(src: str | Path | Mapping, scale: str | None = None, num_classes: int | None = None,
               fused: bool = False) -> tuple[YOLOX, LoadResult]:
    """Build the model a checkpoint holds and load it: scale and class count from the cvpipe meta, else inferred
    from the tensors (or given). Returns (model in eval mode, LoadResult)."""
    skipped: list[str] = []
    ckpt = read_checkpoint(src, skipped) if isinstance(src, (str, Path)) else src
    _, sd = detect_layout(ckpt)
    raw_meta = ckpt.get("meta")
    meta = raw_meta if isinstance(raw_meta, Mapping) else {}
    guessed_scale, guessed_classes = infer_architecture(sd)
    scale = scale or (meta.get("scale") if meta.get("format") == FORMAT_TAG else None) or guessed_scale
    model = build_yolox(scale, num_classes or guessed_classes, fused=fused)
    result = load_checkpoint(model, ckpt)
    result.skipped = skipped
    return model.eval(), result
