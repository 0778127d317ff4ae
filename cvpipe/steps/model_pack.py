"""model_pack: ONNX export (decoded + end-to-end), parity check, packed model dir, and the BentoML Bento.

Either the model_train run's checkpoint (best or last), or bring your own: an existing YOLOX ONNX with raw
(or decoded) outputs plus its class list and input size. Heavy imports live inside the function.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from cvpipe.pipeline import Output, StepContext, StepParams, step

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ModelPackParams(StepParams):
    checkpoint: Literal["best", "last"] = "best"
    name: Optional[str] = Field(None, description="model / Bento name; default yolox-<scale> or the ONNX file stem")
    e2e: bool = Field(True, description="also pack model_e2e.onnx (decoding + NMS inside)")
    simplify: bool = Field(False, description="onnxslim the graph, kept only when parity holds")
    score_thr: float = Field(0.25, ge=0, le=1)
    nms_thr: float = Field(0.45, gt=0, le=1)
    max_det: int = Field(300, ge=1)
    opset: int = Field(17, ge=11)
    bento: bool = Field(True, description="build the BentoML Bento (.bento archive)")
    # bring your own ONNX
    onnx: Optional[Path] = Field(None, description="existing YOLOX ONNX to pack instead of a model_train checkpoint")
    onnx_outputs: Literal["raw", "decoded"] = Field("raw", description="raw: dx, dy, log w, log h, obj, cls "
                                                                       "(Megvii's export); decoded: cx, cy, w, h px")
    class_names: Optional[Union[list[str], Path]] = Field(
        None, description="class names in class-index order, or a .txt (one per line) / .json (list, or a COCO "
                          "file whose categories in id order give names and ids)")
    category_ids: Optional[list[int]] = None
    input_size: Optional[tuple[int, int]] = Field(None, description="(h, w); default: the ONNX input's size")
    test_image: Optional[Path] = Field(None, description="test image (default: model_train's test_image)")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v):
        if v is not None and (v[0] % 32 or v[1] % 32 or min(v) <= 0):
            raise ValueError(f"input_size must be positive multiples of 32, got {v}")
        return v


def read_class_list(spec) -> tuple[list[str], list[int] | None]:
    """class_names param -> (names, category ids or None)."""
    if isinstance(spec, (list, tuple)):
        return [str(c) for c in spec], None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "categories" in data:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            return [c["name"] for c in cats], [int(c["id"]) for c in cats]
        if isinstance(data, dict) and "class_names" in data:
            return [str(c) for c in data["class_names"]], data.get("category_ids")
        if isinstance(data, list):
            return [str(c) for c in data], None
        raise ValueError(f"{path}: expected a JSON list of names, or a COCO file with 'categories'")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names, None


def find_checkpoint(checkpoints: Path, which: str) -> Path:
    found = [p for p in sorted(checkpoints.rglob("*")) if p.is_file() and p.suffix in (".pt", ".pth")]
    for p in found:
        if p.stem == which or p.stem in (f"{which}_ckpt", f"{which}_checkpoint", f"{which}_model"):
            return p
    named = [p for p in found if which in p.stem]
    if len(named) == 1:
        return named[0]
    raise FileNotFoundError(f"no '{which}' checkpoint in {checkpoints} (files: {[p.name for p in found] or 'none'})")


def find_image(folder: Path | None) -> Path | None:
    if folder is None:
        return None
    cands = sorted(p for p in Path(folder).glob("image.*") if p.suffix.lower() in IMAGE_EXTS) or \
        sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    return cands[0] if cands else None


@step("model_pack", params=ModelPackParams,
      inputs={"checkpoints": "model_train.checkpoints?", "test_image": "model_train.test_image?"},
      outputs=[Output("model", description="model.onnx, model_e2e.onnx, model.json, test image, reference.json"),
               Output("bento", description="<name>.bento, Dockerfile, README.md")])
def model_pack(params: ModelPackParams, ctx: StepContext, *, checkpoints: Path | None = None,
               test_image: Path | None = None) -> dict:
    """Export the trained (or a given) YOLOX to ONNX, check parity, pack the model dir and the Bento."""
    import onnx

    from cvpipe.export.onnx import append_decode, append_e2e, check_e2e, check_onnx_parity, check_parity, \
        export_onnx, simplify
    from cvpipe.export.pack import write_model_dir
    from cvpipe.vision import decode_image
    from cvpipe.inference.predictor import Predictor

    image_path = params.test_image or find_image(test_image)
    if image_path is None or not Path(image_path).is_file():
        raise ValueError("model_pack needs a test image: set model_pack.test_image, or run model_train "
                         f"(its test_image entity){f' ({image_path} does not exist)' if image_path else ''}")
    image = decode_image(Path(image_path).read_bytes())
    work = Path(ctx.scratch) / "model_pack"
    work.mkdir(parents=True, exist_ok=True)
    decoded_path, e2e_path = work / "model.onnx", work / "model_e2e.onnx"
    source_runs = {k: v for k, v in (ctx.input_runs or {}).items() if v}
    metrics: dict = {}
    simplified: dict = {"simplified": False}

    if params.onnx is not None:  # bring your own ONNX
        if params.class_names is None:
            raise ValueError("model_pack.onnx needs model_pack.class_names (a list, or a .txt/.json file)")
        src = Path(params.onnx)
        if not src.is_file():
            raise FileNotFoundError(f"model_pack.onnx: {src} does not exist")
        class_names, ids = read_class_list(params.class_names)
        category_ids = params.category_ids or ids
        proto = onnx.load(str(src))
        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        input_size = tuple(params.input_size or (shape[2], shape[3]))
        if not all(input_size):
            raise ValueError(f"{src.name} has a dynamic input size: set model_pack.input_size")
        dec = append_decode(proto, input_size) if params.onnx_outputs == "raw" else proto
        onnx.save(dec, str(decoded_path))
        parity = check_onnx_parity(src, decoded_path, image, input_size, reference_raw=params.onnx_outputs == "raw")
        name = params.name or src.stem
        scale = None
        source = {"onnx": str(src), "outputs": params.onnx_outputs}
    else:
        if checkpoints is None:
            raise ValueError("model_pack has nothing to pack: no complete model_train run (checkpoints) and no "
                             "model_pack.onnx given")
        import torch

        from cvpipe.export.onnx import load_trained

        torch.set_num_threads(min(torch.get_num_threads(), 2))
        ckpt = find_checkpoint(Path(checkpoints), params.checkpoint)
        model, loaded = load_trained(ckpt)
        meta = loaded.meta or {}
        scale = model.scale
        class_names = [str(c) for c in meta.get("class_names") or []] or [str(i) for i in range(model.num_classes)]
        category_ids = params.category_ids or meta.get("category_ids")
        size = meta.get("input_size") or params.input_size
        if size is None:
            from cvpipe.models.yolox import SCALES
            size = SCALES[scale].input_size
        input_size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
        metrics = meta.get("metrics") or {}
        export_onnx(model, decoded_path, input_size, opset=params.opset,
                    metadata={"run_id": ctx.run_id, "scale": scale})
        parity = check_parity(model, decoded_path, image, input_size, score_thr=params.score_thr,
                              nms_thr=params.nms_thr, max_det=params.max_det)
        name = params.name or f"yolox-{scale}"
        source = {"checkpoint": ckpt.name, "layout": loaded.layout, "epoch": meta.get("epoch")}

    Predictor(decoded_path, class_names, category_ids, input_size)  # class count vs outputs, ids vs names
    if params.simplify:
        simplified = simplify(decoded_path, image, input_size)
    if params.e2e:
        onnx.save(append_e2e(onnx.load(str(decoded_path)), params.score_thr, params.nms_thr, params.max_det),
                  str(e2e_path))
        pred = Predictor(decoded_path, class_names, category_ids, input_size, score_thr=params.score_thr,
                         nms_thr=params.nms_thr, max_det=params.max_det)
        x, _ = pred.preprocess(image)
        parity.update(check_e2e(e2e_path, image, input_size, pred.predict(image), decoded=pred.run(x[None])[0],
                                score_thr=params.score_thr, nms_thr=params.nms_thr))

    model_dir = ctx.output("model")
    meta = write_model_dir(model_dir, onnx_path=decoded_path, e2e_path=e2e_path if params.e2e else None,
                           class_names=class_names, category_ids=category_ids, input_size=input_size,
                           test_image=image_path, name=name, run_id=ctx.run_id, source_run_ids=source_runs,
                           score_thr=params.score_thr, nms_thr=params.nms_thr, max_det=params.max_det,
                           metrics=metrics, extra={"scale": scale, "source": source, "parity": parity,
                                                   "simplify": simplified})
    summary = {"onnx_bytes": (model_dir / "model.onnx").stat().st_size,
               "parity_max_abs_diff": parity["max_abs_diff"], "parity_max_scaled_diff": parity["max_scaled_diff"],
               "detections_on_test_image": meta.get("reference_detections"), "input_size": list(input_size),
               "classes": len(class_names), "bento": None}
    if params.bento:
        from cvpipe.serving.bento import build_bento

        res = build_bento(model_dir, ctx.output("bento"), name=name, version=ctx.run_id,
                          bentoml_home=Path(ctx.scratch) / "bentoml_home")
        summary["bento"] = Path(res["archive"]).name
        summary["bento_tag"] = res["tag"]
        log.info("model_pack: bento %s (%d bytes)", res["tag"], res["bytes"])
    return summary
