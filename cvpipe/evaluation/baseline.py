"""What a candidate model is compared with in model_eval: the champion (the promoted model that is served),
or the pretrained model training started from, evaluated on the same images by the same loop; and the gate
is cvpipe.evaluation.gate. The start can be the pretrained ONNX (when it knows the dataset's classes) or the
model training started from, packed by model_pack (`start`: the pretrained weights with fresh class
predictors, when the classes are new)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvpipe.models.pretrained_files import find_nano_onnx
from cvpipe.vision import ClassMap

if TYPE_CHECKING:
    from cvpipe.inference.packed import PackedModel

log = logging.getLogger(__name__)


class APDropError(RuntimeError):
    """The gate refused the candidate (worse than the margin allows, or trained on test images)."""


@dataclass
class EvalModel:
    """A model as the evaluation loop sees it: a batch predictor and its classes (mapped to the dataset's
    by name)."""

    kind: str  # "candidate" | "champion" | "previous champion" | "pretrained" | "start"
    name: str  # run id or file name, for the report
    predict_batch: Callable
    classes: ClassMap


def packed_eval_model(kind: str, model: PackedModel | Path, score_thr: float) -> EvalModel:
    from cvpipe.inference.packed import PackedModel
    from cvpipe.inference.predictor import Predictor

    packed = model if isinstance(model, PackedModel) else PackedModel.load(model)
    predictor = Predictor.from_dir(packed)
    return EvalModel(kind, packed.run_id or packed.dir.name,
                     lambda images: predictor.predict_batch(images, score_thr=score_thr), packed.classes)


def start_eval_model(start_dir: Path | None, score_thr: float) -> EvalModel | None:
    """model_pack's `start` (the model training started from, epoch 0), or None when that folder is empty."""
    if start_dir is None or not (Path(start_dir) / "model.json").is_file():
        return None
    packed = packed_eval_model("start", Path(start_dir), score_thr)
    return EvalModel("start", f"training start (epoch 0) packed by {packed.name}", packed.predict_batch, packed.classes)


def onnx_eval_model(onnx_path: Path, input_size: tuple[int, int], score_thr: float) -> EvalModel:
    """A YOLOX ONNX as published (raw outputs; 80 outputs -> the COCO classes), e.g. the pretrained start."""
    import onnx

    from cvpipe.inference.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
    from cvpipe.inference.predictor import Predictor

    proto = onnx.load(str(onnx_path), load_external_data=False)
    n_out = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if n_out and n_out != 85:
        raise ValueError(f"{onnx_path.name} has {n_out - 5} classes; only an 80-class COCO start is mapped by name")
    decoded = {e.key: e.value for e in proto.metadata_props}.get("graph") == "decoded"
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2] and dims[3]:  # a fixed input size (Megvii's export: 416) wins over the candidate's
        input_size = (dims[2], dims[3])
    predictor = Predictor(onnx_path, COCO_CLASS_NAMES, COCO_CATEGORY_IDS, input_size, raw_outputs=not decoded)
    return EvalModel("pretrained", onnx_path.name, lambda images: predictor.predict_batch(images, score_thr=score_thr),
                     ClassMap.from_names(COCO_CLASS_NAMES, COCO_CATEGORY_IDS))


def label_map_for(model: EvalModel, dataset: ClassMap) -> dict[int, int]:
    """Model label -> dataset label by class name; a model that shares no class with the data is an error."""
    mapping = model.classes.subset_for(dataset)
    if not mapping:
        raise ValueError(f"the {model.kind} model ({model.name}) predicts none of the dataset's classes "
                         f"{list(dataset.names)[:10]}; was it trained on another dataset?")
    missing = [n for i, n in enumerate(dataset.names) if i not in set(mapping.values())]
    if missing:
        log.warning("the %s model never predicts %s: their AP counts as 0 where they have ground truth",
                    model.kind, missing)
    return mapping


def pretrained_path(param: str | None, train_summary: dict | None) -> Path | None:
    """The pretrained ONNX: the param, else what model_train says it started from, else the shipped nano
    (found as training finds it: cvpipe.models.pretrained_files), else None."""
    if param:
        return Path(param)
    info = (train_summary or {}).get("pretrained") or {}
    path = info.get("path") if isinstance(info, dict) else None
    if isinstance(path, str) and path.lower().endswith(".onnx") and Path(path).is_file():
        return Path(path)
    try:
        shipped = find_nano_onnx()
    except FileNotFoundError as e:
        log.info("no pretrained ONNX to compare with: %s", e)
        return None
    if path:
        log.info("the training started from %s, which model_eval cannot run without torch; using %s", path, shipped)
    return shipped
