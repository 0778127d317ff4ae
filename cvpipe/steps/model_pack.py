"""model_pack: the trained checkpoint (or your own YOLOX ONNX) packed for serving by cvpipe.export.pack (ONNX,
parity, end-to-end graph, certified runtime / precision variants, model.json), and the BentoML Bento.

Either the model_train run's checkpoint (best or last), or bring your own: an existing YOLOX ONNX with raw
(or decoded) outputs plus its class list and input size. With a data_prep run, every variant is certified on
its validation split (AP) and INT8 is calibrated on its training images. Heavy imports live inside the
functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union

from pydantic import Field

from cvpipe.data.schema import DetectionData, ImageFiles, TestImage
from cvpipe.export.pack import Bento, PackSettings
from cvpipe.inference.packed import PackedModel
from cvpipe.pipeline import Folder, Output, Produced, StepContext, StepParams, step
from cvpipe.training.checkpoints import Checkpoints

if TYPE_CHECKING:
    from cvpipe.export.pack import OnnxModel, TrainedModel

log = logging.getLogger(__name__)


PACK_FIELDS = set(PackSettings.model_fields)


class ModelPackParams(StepParams, PackSettings):
    """Where the model comes from (a model_train checkpoint, or your own ONNX) and how to pack it."""

    checkpoint: Literal["best", "last"] = "best"
    bento: bool = Field(True, description="build the BentoML Bento (.bento archive)")
    # bring your own ONNX
    onnx: Optional[Path] = Field(None, description="existing YOLOX ONNX to pack instead of a model_train checkpoint")
    onnx_outputs: Literal["raw", "decoded"] = Field("raw", description="raw: dx, dy, log w, log h, obj, cls "
                                                                       "(Megvii's export); decoded: cx, cy, w, h px")
    class_names: Optional[Union[list[str], Path]] = Field(
        None, description="class names in class-index order, or a .txt (one per line) / .json (list, or a COCO "
                          "file whose categories in id order give names and ids)")
    category_ids: Optional[list[int]] = None
    test_image: Optional[Path] = Field(None, description="test image (default: model_train's test_image)")


@step("model_pack", params=ModelPackParams,
      inputs={"checkpoints": "model_train.checkpoints?", "test_image": "model_train.test_image?",
              "dataset": "data_prep.dataset?", "images": "data_prep.images?"},
      outputs=[Output("model", PackedModel, description="model.onnx, model_e2e.onnx, certified variants "
                                                        "(model_int8.onnx, model_openvino.xml/.bin, ...), "
                                                        "model.json, test image, reference.json"),
               Output("bento", Bento, description="<name>.bento, Dockerfile, README.md"),
               Output("start", Folder, description="the model training started from (model_train's start.pt, "
                                                   "epoch 0), packed as fp32 ONNX + model.json, so model_eval can "
                                                   "say what fine-tuning gained; empty when there is none")])
def model_pack(params: ModelPackParams, ctx: StepContext, *, checkpoints: Checkpoints | None = None,
               test_image: TestImage | None = None, dataset: DetectionData | None = None,
               images: ImageFiles | None = None) -> Produced:
    """Export the trained (or a given) YOLOX to ONNX, check parity, certify variants, pack the dir and Bento."""
    from cvpipe.export.pack import CertificationData, pack

    image = params.test_image or (test_image.image if test_image is not None else None)
    if image is None or not Path(image).is_file():
        raise ValueError("model_pack needs a test image: set model_pack.test_image, or run model_train "
                         f"(its test_image entity){f' ({image} does not exist)' if image else ''}")
    data = CertificationData(dataset, images) if dataset is not None and images is not None else None
    packed = pack(model_source(params, checkpoints), PackSettings(**params.model_dump(include=PACK_FIELDS)),
                  test_image=Path(image), out=ctx.workdir("model"), work=ctx.scratch / "model_pack", data=data,
                  run_id=ctx.run_id, source_run_ids={k: v for k, v in ctx.input_runs.items() if v})
    meta = packed.meta
    summary = {"onnx_bytes": packed.onnx_path.stat().st_size,
               "parity_max_abs_diff": meta["parity"]["max_abs_diff"],
               "parity_max_scaled_diff": meta["parity"]["max_scaled_diff"],
               "detections_on_test_image": meta["reference_detections"], "input_size": list(packed.input_size),
               "classes": len(meta["class_names"]), "bento": None, "default_variant": packed.default_variant,
               "variants": {n: v["certificate"] for n, v in meta["variants"].items()},
               "refused_variants": meta["refused_variants"]}
    bento = Bento(ctx.workdir("bento"))
    if params.bento:
        summary.update(build_bento(packed, bento, ctx))
    start = ctx.workdir("start")
    summary["start_packed"] = pack_start(params, checkpoints, Path(image), start, ctx)
    return Produced(summary, model=packed, bento=bento, start=Folder(start))


def pack_start(params: ModelPackParams, checkpoints: Checkpoints | None, image: Path, out: Path,
               ctx: StepContext) -> bool:
    """The training's start (start.pt) as a plain fp32 ONNX model dir in `out` (no variants, no e2e graph: it is
    only evaluated, never served); False when there is none (your own ONNX, or a run from before start.pt)."""
    from cvpipe.export.pack import TrainedModel, pack

    if params.onnx is not None or checkpoints is None or checkpoints.start is None:
        return False
    settings = PackSettings(**params.model_dump(include=PACK_FIELDS)).model_copy(
        update={"e2e": False, "variants": [], "simplify": False})
    pack(TrainedModel(checkpoints, "start"), settings, test_image=image, out=out, work=ctx.scratch / "pack_start",
         run_id=ctx.run_id, source_run_ids={k: v for k, v in ctx.input_runs.items() if v})
    return True


def model_source(params: ModelPackParams, checkpoints: Checkpoints | None) -> OnnxModel | TrainedModel:
    """What to pack: your own ONNX (with its class list), else model_train's checkpoint."""
    from cvpipe.export.pack import OnnxModel, TrainedModel, read_class_list

    if params.onnx is not None:
        if params.class_names is None:
            raise ValueError("model_pack.onnx needs model_pack.class_names (a list, or a .txt/.json file)")
        names, ids = read_class_list(params.class_names)
        return OnnxModel(Path(params.onnx), names, params.category_ids or ids, params.onnx_outputs)
    if checkpoints is None:
        raise ValueError("model_pack has nothing to pack: no complete model_train run (checkpoints) and no "
                         "model_pack.onnx given")
    return TrainedModel(checkpoints, params.checkpoint)


def build_bento(packed: PackedModel, bento: Bento, ctx: StepContext) -> dict:
    from cvpipe.serving.bento import build_bento as build

    res = build(packed.dir, bento.directory, name=packed.meta["name"], version=ctx.run_id,
                bentoml_home=ctx.scratch / "bentoml_home")
    log.info("model_pack: bento %s (%d bytes)", res["tag"], res["bytes"])
    return {"bento": Path(res["archive"]).name, "bento_tag": res["tag"]}
