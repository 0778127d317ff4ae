"""model_pack: ONNX export (decoded + end-to-end), parity check, certified runtime / precision variants,
packed model dir, and the BentoML Bento.

Either the model_train run's checkpoint (best or last), or bring your own: an existing YOLOX ONNX with raw
(or decoded) outputs plus its class list and input size. With a data_prep run, every variant is certified on
its validation split (AP) and INT8 is calibrated on its training images (cvpipe.export.variants). Heavy
imports live inside the functions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
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
    # runtime / precision variants next to fp32 ONNX Runtime (docs/runtimes.md)
    variants: list[Literal["int8", "openvino", "openvino_int8"]] = Field(
        ["openvino_int8"], description="variants to build and certify besides fp32: int8 (ONNX Runtime QDQ), "
                                       "openvino (fp32 IR), openvino_int8; each is packed only if it passes the "
                                       "budget (docs/runtimes.md: openvino_int8 is the one measured to pay off)")
    default_variant: Literal["auto", "fp32", "int8", "openvino", "openvino_int8"] = Field(
        "auto", description="auto: the fastest accepted variant at the load of default_for (>= 1.1x fp32), "
                            "else fp32")
    default_for: Literal["throughput", "latency"] = Field(
        "throughput", description="the load the default variant is chosen on: throughput (default_concurrency "
                                  "requests at once, a loaded service) or latency (one request at a time)")
    default_concurrency: int = Field(4, ge=2, le=64, description="requests at once for the throughput timing")
    max_ap_drop: float = Field(1.0, ge=0, description="INT8 budget: AP points (x100) lost on the val split vs fp32")
    min_match_f1: float = Field(0.9, ge=0, le=1, description="INT8 budget: box-match F1 vs the reference at IoU 0.5")
    calibration_images: int = Field(64, ge=1, description="training images INT8 is calibrated on")
    int8_keep_float: list[Literal["head", "stem", "depthwise"]] = Field(
        ["head", "stem", "depthwise"], description="convolutions INT8 leaves in float")
    val_split: str = Field("val", description="data_prep split the certificates' AP is measured on")
    max_val_images: Optional[int] = Field(None, ge=1, description="certify on the first N val images only")
    match_images: int = Field(4, ge=1, le=64, description="val images for box matching against the reference "
                                                          "model (PyTorch on CPU: ~1 s per image) and batch checks")

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


def checkpoint_file(checkpoints: Path, which: str) -> tuple[Path, dict]:
    """(the best or last checkpoint, its metadata) through model_train's Checkpoints entity."""
    from cvpipe.training.checkpoints import Checkpoints

    ck = Checkpoints.load(checkpoints)
    path = ck.best if which == "best" else ck.last
    if path is None:
        raise FileNotFoundError(f"no '{which}' checkpoint in {checkpoints} (best: {ck.best.name})")
    return path, ck.meta if which == "best" else {}


@dataclass
class Source:
    """The fp32 model being packed, with what the certificates compare it to."""
    decoded_path: Path
    class_names: list[str]
    category_ids: list[int] | None
    input_size: tuple[int, int]
    name: str
    parity: dict
    extra: dict = field(default_factory=dict)  # scale, source: recorded in model.json
    metrics: dict = field(default_factory=dict)
    torch_model: object = None  # the PyTorch model (trained checkpoint) or None (bring your own)


def find_image(folder: Path | None) -> Path | None:
    if folder is None:
        return None
    cands = sorted(p for p in Path(folder).glob("image.*") if p.suffix.lower() in IMAGE_EXTS) or \
        sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    return cands[0] if cands else None


@step("model_pack", params=ModelPackParams,
      inputs={"checkpoints": "model_train.checkpoints?", "test_image": "model_train.test_image?",
              "dataset": "data_prep.dataset?", "images": "data_prep.images?"},
      outputs=[Output("model", description="model.onnx, model_e2e.onnx, certified variants (model_int8.onnx, "
                                           "model_openvino.xml/.bin, ...), model.json, test image, reference.json"),
               Output("bento", description="<name>.bento, Dockerfile, README.md")])
def model_pack(params: ModelPackParams, ctx: StepContext, *, checkpoints: Path | None = None,
               test_image: Path | None = None, dataset: Path | None = None, images: Path | None = None) -> dict:
    """Export the trained (or a given) YOLOX to ONNX, check parity, certify variants, pack the dir and Bento."""
    from cvpipe.export.pack import write_model_dir
    from cvpipe.vision import read_image

    image_path = params.test_image or find_image(test_image)
    if image_path is None or not Path(image_path).is_file():
        raise ValueError("model_pack needs a test image: set model_pack.test_image, or run model_train "
                         f"(its test_image entity){f' ({image_path} does not exist)' if image_path else ''}")
    image = read_image(image_path)
    work = Path(ctx.scratch) / "model_pack"
    work.mkdir(parents=True, exist_ok=True)
    src = byo_source(params, image, work) if params.onnx is not None else \
        checkpoint_source(params, image, work, checkpoints, ctx.run_id)
    e2e_path = pack_e2e(params, src, image, work)
    model_dir = ctx.output("model")
    write_model_dir(model_dir, onnx_path=src.decoded_path, e2e_path=e2e_path,
                    class_names=src.class_names, category_ids=src.category_ids, input_size=src.input_size,
                    test_image=image_path, name=src.name, run_id=ctx.run_id,
                    source_run_ids={k: v for k, v in (ctx.input_runs or {}).items() if v},
                    score_thr=params.score_thr, nms_thr=params.nms_thr, max_det=params.max_det,
                    metrics=src.metrics, extra={**src.extra, "parity": src.parity})
    meta = pack_variants(params, src, model_dir, image, dataset, images, work)
    summary = {"onnx_bytes": (model_dir / "model.onnx").stat().st_size,
               "parity_max_abs_diff": src.parity["max_abs_diff"],
               "parity_max_scaled_diff": src.parity["max_scaled_diff"],
               "detections_on_test_image": meta.get("reference_detections"), "input_size": list(src.input_size),
               "classes": len(src.class_names), "bento": None, "default_variant": meta["default_variant"],
               "variants": {n: v["certificate"] for n, v in meta["variants"].items()},
               "refused_variants": meta["refused_variants"]}
    if params.bento:
        summary.update(pack_bento(model_dir, ctx, src.name))
    return summary


def byo_source(params: ModelPackParams, image, work: Path) -> Source:
    """Bring your own ONNX: append the decode to a raw-output graph, check it against the original."""
    import onnx

    from cvpipe.export.onnx import append_decode, check_onnx_parity

    if params.class_names is None:
        raise ValueError("model_pack.onnx needs model_pack.class_names (a list, or a .txt/.json file)")
    src = Path(params.onnx)
    if not src.is_file():
        raise FileNotFoundError(f"model_pack.onnx: {src} does not exist")
    class_names, ids = read_class_list(params.class_names)
    proto = onnx.load(str(src))
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    input_size = tuple(params.input_size or (shape[2], shape[3]))
    if not all(input_size):
        raise ValueError(f"{src.name} has a dynamic input size: set model_pack.input_size")
    decoded_path = work / "model.onnx"
    onnx.save(append_decode(proto, input_size) if params.onnx_outputs == "raw" else proto, str(decoded_path))
    parity = check_onnx_parity(src, decoded_path, image, input_size, reference_raw=params.onnx_outputs == "raw")
    return Source(decoded_path, class_names, params.category_ids or ids, input_size, params.name or src.stem, parity,
                  extra={"scale": None, "source": {"onnx": str(src), "outputs": params.onnx_outputs}})


def checkpoint_source(params: ModelPackParams, image, work: Path, checkpoints: Path | None, run_id: str) -> Source:
    """A model_train checkpoint (cvpipe.training.checkpoints.Checkpoints): export to ONNX, parity against
    PyTorch."""
    if checkpoints is None:
        raise ValueError("model_pack has nothing to pack: no complete model_train run (checkpoints) and no "
                         "model_pack.onnx given")
    import torch

    from cvpipe.export.onnx import check_parity, export_onnx, load_trained

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    ckpt, meta = checkpoint_file(Path(checkpoints), params.checkpoint)
    model, loaded = load_trained(ckpt)  # fused (BN-folded) or plain weights, whichever the file holds
    meta = meta or loaded.meta or {}
    class_names = [str(c) for c in meta.get("class_names") or []] or [str(i) for i in range(model.num_classes)]
    size = meta.get("input_size") or params.input_size
    if size is None:
        from cvpipe.models.yolox import SCALES
        size = SCALES[model.scale].input_size
    input_size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    decoded_path = work / "model.onnx"
    export_onnx(model, decoded_path, input_size, opset=params.opset, metadata={"run_id": run_id, "scale": model.scale})
    parity = check_parity(model, decoded_path, image, input_size, score_thr=params.score_thr,
                          nms_thr=params.nms_thr, max_det=params.max_det)
    return Source(decoded_path, class_names, params.category_ids or meta.get("category_ids"), input_size,
                  params.name or f"yolox-{model.scale}", parity, metrics=meta.get("metrics") or {}, torch_model=model,
                  extra={"scale": model.scale, "source": {"checkpoint": ckpt.name, "layout": loaded.layout,
                                                          "epoch": meta.get("epoch")}})


def pack_e2e(params: ModelPackParams, src: Source, image, work: Path) -> Path | None:
    """Check the class count, optionally slim the graph, and build + check the end-to-end (NMS inside) graph."""
    import onnx

    from cvpipe.export.onnx import append_e2e, check_e2e, simplify
    from cvpipe.inference.predictor import Predictor

    Predictor(src.decoded_path, src.class_names, src.category_ids, src.input_size)  # class count vs outputs
    src.extra["simplify"] = simplify(src.decoded_path, image, src.input_size) if params.simplify else \
        {"simplified": False}
    if not params.e2e:
        return None
    e2e_path = work / "model_e2e.onnx"
    onnx.save(append_e2e(onnx.load(str(src.decoded_path)), params.score_thr, params.nms_thr, params.max_det),
              str(e2e_path))
    pred = Predictor(src.decoded_path, src.class_names, src.category_ids, src.input_size, score_thr=params.score_thr,
                     nms_thr=params.nms_thr, max_det=params.max_det)
    x, _ = pred.preprocess(image)
    src.parity.update(check_e2e(e2e_path, image, src.input_size, pred.predict(image), decoded=pred.run(x[None])[0],
                                score_thr=params.score_thr, nms_thr=params.nms_thr))
    return e2e_path


def pack_variants(params: ModelPackParams, src: Source, model_dir: Path, image, dataset: Path | None,
                  images: Path | None, work: Path) -> dict:
    """Certify fp32 and build + certify the asked-for variants, choose the default, record it all."""
    from cvpipe.export.pack import set_variants
    from cvpipe.export.variants import Budget, build_and_certify, choose_default, withdraw

    inputs = certification_inputs(params, src, model_dir, image, dataset, images)
    budget = Budget(max_ap_drop=params.max_ap_drop, min_match_f1=params.min_match_f1)
    accepted, refused = build_and_certify(params.variants, inputs, budget, work)
    default, choice, slower = choose_default(accepted, inputs, budget, params.default_variant, params.default_for,
                                             params.default_concurrency)
    withdraw(accepted, refused, slower, model_dir)
    log.info("model_pack: variants %s, default %s (%s)", ", ".join(accepted), default,
             choice.get("speedup_vs_fp32") or choice["rule"])
    return set_variants(model_dir, accepted, default, refused, choice)


def certification_inputs(params: ModelPackParams, src: Source, model_dir: Path, image, dataset: Path | None,
                         images: Path | None):
    """Validation split, calibration images, match images and the reference model's detections on them."""
    from cvpipe.export.variants import PackInputs
    from cvpipe.vision import read_image

    val, calibration = val_and_calibration(params, src, dataset, images)
    match_images = [image]
    if val is not None:
        infos = sorted(val.gt["images"], key=lambda i: i["id"])[:params.match_images]
        match_images = [read_image(val.images_dir / i["file_name"]) for i in infos] or [image]
    thresholds = {"score_thr": params.score_thr, "nms_thr": params.nms_thr, "max_det": params.max_det}
    reference, reference_name = reference_detections(src, model_dir, match_images, thresholds)
    return PackInputs(model_dir, src.class_names, src.category_ids or list(range(len(src.class_names))),
                      src.input_size, thresholds, image, match_images, reference, reference_name, val, calibration,
                      params.int8_keep_float)


def val_and_calibration(params: ModelPackParams, src: Source, dataset: Path | None, images: Path | None):
    """(ValSplit of data_prep's val split or None, training image paths for INT8 calibration)."""
    if dataset is None or images is None:
        return None, []
    from cvpipe.data.schema import DetectionDataset
    from cvpipe.export.certify import ValSplit
    from cvpipe.vision import ClassMap

    ds = DetectionDataset.load(dataset)
    gt = ds.to_coco(params.val_split)
    if params.max_val_images is not None:
        keep = sorted(gt["images"], key=lambda i: i["id"])[:params.max_val_images]
        ids = {i["id"] for i in keep}
        gt = {**gt, "images": keep, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    train = sorted(ds.to_coco("train")["images"], key=lambda i: i["id"])[:params.calibration_images]
    calibration = [Path(images) / i["file_name"] for i in train]
    if not gt["images"]:
        log.warning("model_pack: data_prep has no %r split: variants are certified without AP", params.val_split)
        return None, calibration
    gt_classes = ClassMap.from_coco_categories(gt["categories"])
    model_classes = ClassMap.from_names(src.class_names, src.category_ids)
    return ValSplit(gt, Path(images), gt_classes, model_classes.subset_for(gt_classes)), calibration


def reference_detections(src: Source, model_dir: Path, match_images: list, thresholds: dict):
    """What every variant's boxes are matched against: the PyTorch model when packing a checkpoint, else the
    fp32 ONNX graph (all the bring-your-own path has)."""
    from cvpipe.inference.predictor import Predictor

    fp32 = Predictor(model_dir / "model.onnx", src.class_names, src.category_ids, src.input_size, **thresholds)
    if src.torch_model is None:
        return [fp32.predict(im) for im in match_images], "onnx fp32"
    import torch

    model = src.torch_model
    model.eval()
    model.head.decode_in_inference = True
    out = []
    with torch.no_grad():
        for im in match_images:
            x, r = fp32.preprocess(im)
            out.append(fp32.postprocess(model(torch.from_numpy(x[None])).numpy()[0], r, im.shape[:2]))
    return out, "pytorch"


def pack_bento(model_dir: Path, ctx: StepContext, name: str) -> dict:
    from cvpipe.serving.bento import build_bento

    res = build_bento(model_dir, ctx.output("bento"), name=name, version=ctx.run_id,
                      bentoml_home=Path(ctx.scratch) / "bentoml_home")
    log.info("model_pack: bento %s (%d bytes)", res["tag"], res["bytes"])
    return {"bento": Path(res["archive"]).name, "bento_tag": res["tag"]}
