"""Packing: one `pack(...)` from a trained checkpoint or a YOLOX ONNX to the packed model dir, the contract
every consumer reads (cvpipe.inference.packed):

    model.onnx       decoded outputs [B, N, 5+C] (dynamic batch; a bring-your-own graph may keep batch 1)
    model_e2e.onnx   decoding + per-class NMS inside (output `detections` [K, 7]; see cvpipe.export.onnx)
    model_int8.onnx, model_openvino.{xml,bin}, model_openvino_int8.{xml,bin}
                     the certified variants (cvpipe.export.variants), where packed
    model.json       the ModelCard: name, run ids, input size, classes, input contract, outputs, thresholds,
                     metrics, variants with their certificates, default variant, refused variants
    test_image.<ext> an image to smoke-test the model / service with
    reference.json   the default variant's prediction on it, exactly what POST /predict returns for it (other
                     variants' own predictions: model.json variants.<name>.reference)
    README.md        this layout, for whoever finds the folder

    packed = pack(TrainedModel(checkpoints), PackSettings(), test_image=path, out=dir, work=tmp)

Steps: the fp32 decoded graph (exported from PyTorch and checked against the torch predictor, or a given ONNX
with the decode appended and checked against its original), the end-to-end graph, the variants certified
against the reference model (PyTorch when there is one), then model.json, written once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cvpipe.inference.packed import GRAPH_OUTPUTS, ModelCard, PackedModel
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import ClassMap, Detections, read_image

if TYPE_CHECKING:
    from cvpipe.data.schema import DetectionDataset, ImageFiles
    from cvpipe.export.certify import ValSplit
    from cvpipe.inference.torch_predictor import TorchPredictor
    from cvpipe.training.checkpoints import Checkpoints

log = logging.getLogger(__name__)

VariantName = Literal["int8", "openvino", "openvino_int8"]


class PackSettings(BaseModel):
    """How to pack (model_pack's params hold these and say where the model comes from)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str | None = Field(None, description="model / Bento name; default yolox-<scale> or the ONNX file stem")
    input_size: tuple[int, int] | None = Field(
        None, description="(h, w) to export at; default the checkpoint's training size, or the ONNX input's size. "
                          "Set, it wins (YOLOX is fully convolutional); a fixed-size ONNX must match it")
    e2e: bool = Field(True, description="also pack model_e2e.onnx (decoding + NMS inside)")
    simplify: bool = Field(False, description="onnxslim the graph, kept only when parity holds")
    score_thr: float = Field(0.25, ge=0, le=1)
    nms_thr: float = Field(0.45, gt=0, le=1)
    max_det: int = Field(300, ge=1)
    opset: int = Field(17, ge=11)
    # runtime / precision variants next to fp32 ONNX Runtime (docs/runtimes.md)
    variants: list[VariantName] = Field(
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
    max_val_images: int | None = Field(None, ge=1, description="certify on the first N val images only")
    match_images: int = Field(4, ge=1, le=64, description="val images for box matching against the reference "
                                                          "model (PyTorch on CPU: ~1 s per image) and batch checks")

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] % 32 or v[1] % 32 or min(v) <= 0):
            raise ValueError(f"input_size must be positive multiples of 32, got {v}")
        return v

    @property
    def thresholds(self) -> dict[str, Any]:
        return {"score_thr": self.score_thr, "nms_thr": self.nms_thr, "max_det": self.max_det}


@dataclass(frozen=True)
class Bento:
    """model_pack's `bento` entity: <name>.bento (the BentoML archive: service code, the packed model, its
    Python environment), a Dockerfile and a README; empty when model_pack.bento is false."""

    directory: Path

    @classmethod
    def load(cls, directory: str | Path) -> Bento:
        return cls(Path(directory))

    def save(self, directory: str | Path) -> None:
        from cvpipe.pipeline.entity import link_tree

        link_tree(self.directory, Path(directory))

    @property
    def archive(self) -> Path:
        found = sorted(self.directory.glob("*.bento"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one .bento archive in {self.directory}, found "
                                    f"{[p.name for p in found]}")
        return found[0]


# ---- what is packed ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedModel:
    """A model_train checkpoint (the best, the last epoch's, or the start: epoch 0)."""

    checkpoints: Checkpoints
    which: Literal["best", "last", "start"] = "best"


@dataclass(frozen=True)
class OnnxModel:
    """Bring your own: a YOLOX ONNX with raw outputs (dx, dy, log w, log h, obj, cls: Megvii's export) or decoded
    ones (cx, cy, w, h px), and its classes in class-index order."""

    path: Path
    class_names: list[str]
    category_ids: list[int] | None = None
    outputs: Literal["raw", "decoded"] = "raw"


@dataclass(frozen=True)
class CertificationData:
    """data_prep's dataset and images: the validation split certificates measure AP on, INT8's calibration."""

    dataset: DetectionDataset
    images: ImageFiles


@dataclass
class Prepared:
    """The fp32 decoded graph, ready to pack, and what model.json says about where it came from."""

    decoded: Path
    classes: ClassMap
    input_size: tuple[int, int]
    name: str
    parity: dict[str, Any]
    card: dict[str, Any] = field(default_factory=dict)  # scale, source, metrics
    reference: TorchPredictor | None = None  # the PyTorch model, when packing a checkpoint


def read_class_list(spec: list[str] | Path | str) -> tuple[list[str], list[int] | None]:
    """Class names (and category ids where the file has them) from a list, a .txt (one per line) or a .json
    (a list, {"class_names": [...]}, or a COCO file whose categories in id order give names and ids)."""
    if isinstance(spec, (list, tuple)):
        return [str(c) for c in spec], None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()], None
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "categories" in data:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        return [c["name"] for c in cats], [int(c["id"]) for c in cats]
    if isinstance(data, dict) and "class_names" in data:
        return [str(c) for c in data["class_names"]], data.get("category_ids")
    if isinstance(data, list):
        return [str(c) for c in data], None
    raise ValueError(f"{path}: expected a JSON list of names, or a COCO file with 'categories'")


def export_size(explicit: tuple[int, int] | None, trained: Any, scale: str) -> tuple[int, int]:
    """The size to export a checkpoint at: the explicit one wins (logged when it differs from the training
    size), else the size it was trained at, else the scale's default."""
    from cvpipe.models.yolox import SCALES

    size = trained or SCALES[scale].input_size
    size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    if explicit is not None and tuple(explicit) != size:
        log.info("model_pack: exporting at input_size %s (trained at %s)", tuple(explicit), size)
    return (int(explicit[0]), int(explicit[1])) if explicit is not None else size


def prepare_trained(model: TrainedModel, settings: PackSettings, image: np.ndarray, work: Path,
                    run_id: str | None) -> Prepared:
    """Export the checkpoint to the decoded ONNX; parity against the torch predictor."""
    import torch

    from cvpipe.export.onnx import check_parity, export_onnx, load_trained
    from cvpipe.inference.torch_predictor import TorchPredictor

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    ck = model.checkpoints
    path = ck.path(model.which)
    if path is None:
        raise FileNotFoundError(f"no '{model.which}' checkpoint in {ck.directory} (best: {ck.best.name})")
    net, loaded = load_trained(path)  # fused (BN-folded) or plain weights, whichever the file holds
    meta = (ck.meta if model.which == "best" else {}) or loaded.meta or {}
    names = [str(c) for c in meta.get("class_names") or []] or [str(i) for i in range(net.num_classes)]
    input_size = export_size(settings.input_size, meta.get("input_size"), net.scale)
    decoded = export_onnx(net, work / "model.onnx", input_size, opset=settings.opset,
                          metadata={"run_id": run_id, "scale": net.scale})
    reference = TorchPredictor(net, input_size, **settings.thresholds)
    parity = check_parity(reference, decoded, image)
    source = {"checkpoint": path.name, "layout": loaded.layout, "epoch": meta.get("epoch")}
    return Prepared(decoded, ClassMap.from_names(names, meta.get("category_ids")), input_size,
                    settings.name or f"yolox-{net.scale}", parity,
                    {"scale": net.scale, "source": source, "metrics": meta.get("metrics") or {}}, reference)


def prepare_onnx(model: OnnxModel, settings: PackSettings, image: np.ndarray, work: Path) -> Prepared:
    """Append the decode to a raw-output graph; parity against the original decoded in numpy."""
    import onnx

    from cvpipe.export.onnx import append_decode, check_onnx_parity

    if not model.path.is_file():
        raise FileNotFoundError(f"model_pack.onnx: {model.path} does not exist")
    proto = onnx.load(str(model.path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    fixed = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
    if fixed and settings.input_size and tuple(settings.input_size) != fixed:
        raise ValueError(f"model_pack.input_size {tuple(settings.input_size)} does not fit {model.path.name}, "
                         f"whose input is fixed at {fixed}: leave input_size unset, or export the ONNX at that size")
    input_size = settings.input_size or fixed
    if input_size is None:
        raise ValueError(f"{model.path.name} has a dynamic input size: set model_pack.input_size")
    input_size = (int(input_size[0]), int(input_size[1]))
    decoded = work / "model.onnx"
    onnx.save(append_decode(proto, input_size) if model.outputs == "raw" else proto, str(decoded))
    parity = check_onnx_parity(model.path, decoded, image, input_size, reference_raw=model.outputs == "raw")
    return Prepared(decoded, ClassMap.from_names(model.class_names, model.category_ids), input_size,
                    settings.name or model.path.stem, parity,
                    {"scale": None, "source": {"onnx": str(model.path), "outputs": model.outputs}})


# ---- packing -------------------------------------------------------------------------------------------------
def pack(model: TrainedModel | OnnxModel, settings: PackSettings, *, test_image: Path, out: Path, work: Path,
         data: CertificationData | None = None, run_id: str | None = None,
         source_run_ids: dict[str, str] | None = None) -> PackedModel:
    """Fill the empty dir `out` with the packed model (see the module docstring); the PackedModel."""
    image = read_image(test_image)
    work.mkdir(parents=True, exist_ok=True)
    prepared = prepare_trained(model, settings, image, work, run_id) if isinstance(model, TrainedModel) \
        else prepare_onnx(model, settings, image, work)
    predictor_for(prepared.decoded, prepared, settings)  # class count vs outputs, before anything else
    prepared.card["simplify"] = _simplify(prepared, image, settings.simplify)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prepared.decoded, out / "model.onnx")
    if settings.e2e:
        fp32 = predictor_for(out / "model.onnx", prepared, settings)
        prepared.parity.update(_pack_e2e(prepared, image, settings, out / "model_e2e.onnx", fp32))
    image_name = f"test_image{test_image.suffix.lower() or '.jpg'}"
    shutil.copyfile(test_image, out / image_name)
    variants = certify_variants(prepared, settings, out, image, data, work)
    references = {name: reference_of(predictor_for(out / v["files"][0], prepared, settings, name), image, run_id)
                  for name, v in variants["variants"].items()}
    card = ModelCard(
        name=prepared.name, run_id=run_id, source_run_ids=source_run_ids or {},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        input_size=list(prepared.input_size), class_names=list(prepared.classes.names),
        category_ids=list(prepared.classes.category_ids),
        outputs={k: v for k, v in GRAPH_OUTPUTS.items() if k == "model.onnx" or settings.e2e},
        e2e="model_e2e.onnx" if settings.e2e else None, batch=_batch(out / "model.onnx", prepared),
        test_image=image_name, reference_detections=len(references[variants["default_variant"]]["detections"]),
        parity=prepared.parity, **settings.thresholds, **prepared.card,
        **{**variants, "variants": {n: {**v, "reference": references[n]["detections"]}
                                    for n, v in variants["variants"].items()}})
    packed = PackedModel.save_card(out, card)
    (out / "reference.json").write_text(json.dumps(references[packed.default_variant], indent=2))
    write_readme(packed)
    return packed


def predictor_for(path: Path, prepared: Prepared, settings: PackSettings, variant: str = "fp32") -> Predictor:
    from cvpipe.export.variants import BACKEND

    return Predictor(path, prepared.classes.names, prepared.classes.category_ids, prepared.input_size,
                     backend=BACKEND[variant], variant=variant, **settings.thresholds)


def _batch(path: Path, prepared: Prepared) -> int | Literal["dynamic"]:
    fixed = Predictor(path, prepared.classes.names, prepared.classes.category_ids, prepared.input_size).fixed_batch
    return "dynamic" if fixed is None else int(fixed)


def _simplify(prepared: Prepared, image: np.ndarray, wanted: bool) -> dict[str, Any]:
    from cvpipe.export.onnx import simplify

    return simplify(prepared.decoded, image, prepared.input_size) if wanted else {"simplified": False}


def _pack_e2e(prepared: Prepared, image: np.ndarray, settings: PackSettings, path: Path,
              fp32: Predictor) -> dict[str, Any]:
    """Build the end-to-end (NMS inside) graph and check it against the numpy postprocess."""
    import onnx

    from cvpipe.export.onnx import append_e2e, check_e2e

    onnx.save(append_e2e(onnx.load(str(prepared.decoded)), settings.score_thr, settings.nms_thr, settings.max_det),
              str(path))
    x, _ = fp32.preprocess(image)
    return check_e2e(path, image, prepared.input_size, fp32.predict(image), decoded=fp32.run(x[None])[0],
                     score_thr=settings.score_thr, nms_thr=settings.nms_thr)


def reference_of(predictor: Predictor, image: np.ndarray, run_id: str | None) -> dict[str, Any]:
    """What POST /predict returns for the test image when the service runs this variant."""
    return {"detections": predictor.to_json(predictor.predict(image)),
            "image": {"width": int(image.shape[1]), "height": int(image.shape[0])}, "model": {"run_id": run_id}}


# ---- variants ------------------------------------------------------------------------------------------------
def certify_variants(prepared: Prepared, settings: PackSettings, out: Path, image: np.ndarray,
                     data: CertificationData | None, work: Path) -> dict[str, Any]:
    """Certify fp32 and build + certify the asked-for variants (files into `out`), choose the default: the
    variants, default_variant, refused_variants and default_choice fields of model.json."""
    from cvpipe.export.variants import Budget, PackInputs, build_and_certify, choose_default, withdraw

    val, calibration = certification_split(prepared.classes, settings, data)
    match_images = [image]
    if val is not None:
        infos = sorted(val.gt["images"], key=lambda i: i["id"])[:settings.match_images]
        match_images = [read_image(val.images_dir / i["file_name"]) for i in infos] or [image]
    reference, reference_name = reference_detections(prepared, out, settings, match_images)
    inputs = PackInputs(out, list(prepared.classes.names), list(prepared.classes.category_ids), prepared.input_size,
                        settings.thresholds, image, match_images, reference, reference_name, val, calibration,
                        settings.int8_keep_float)
    budget = Budget(max_ap_drop=settings.max_ap_drop, min_match_f1=settings.min_match_f1)
    accepted, refused = build_and_certify(settings.variants, inputs, budget, work)
    default, choice, slower = choose_default(accepted, inputs, budget, settings.default_variant,
                                             settings.default_for, settings.default_concurrency)
    withdraw(accepted, refused, slower, out)
    log.info("model_pack: variants %s, default %s (%s)", ", ".join(accepted), default,
             choice.get("speedup_vs_fp32") or choice["rule"])
    return {"variants": accepted, "default_variant": default, "refused_variants": refused, "default_choice": choice}


def certification_split(classes: ClassMap, settings: PackSettings, data: CertificationData | None
                        ) -> tuple[ValSplit | None, list[Path]]:
    """(the validation split or None, training image paths for INT8 calibration)."""
    from cvpipe.export.certify import ValSplit

    if data is None:
        return None, []
    gt = data.dataset.to_coco(settings.val_split, max_images=settings.max_val_images)
    train = sorted(data.dataset.to_coco("train", max_images=settings.calibration_images)["images"],
                   key=lambda i: i["id"])
    calibration = [data.images.path(i["file_name"]) for i in train]
    if not gt["images"]:
        log.warning("model_pack: data_prep has no %r split: variants are certified without AP", settings.val_split)
        return None, calibration
    gt_classes = ClassMap.from_coco_categories(gt["categories"])
    return ValSplit(gt, data.images.directory, gt_classes, classes.subset_for(gt_classes)), calibration


def reference_detections(prepared: Prepared, out: Path, settings: PackSettings, images: list[np.ndarray]
                         ) -> tuple[list[Detections], str]:
    """What every variant's boxes are matched against: the PyTorch model when packing a checkpoint, else the
    fp32 ONNX graph (all the bring-your-own path has)."""
    if prepared.reference is not None:
        return [prepared.reference.predict(im) for im in images], "pytorch"
    fp32 = predictor_for(out / "model.onnx", prepared, settings)
    return [fp32.predict(im) for im in images], "onnx fp32"


# ---- README --------------------------------------------------------------------------------------------------
README = """# Packed cvpipe detection model `{name}` (run `{run_id}`)

| file | what |
|---|---|
| `model.onnx` | YOLOX graph, input `images` float32 [B,3,{h},{w}], output `output` [B,N,5+C] decoded: cx, cy, w, h in input pixels, objectness, class probabilities. Batch: {batch}. |
| `model_e2e.onnx` | same graph + score = obj x best class prob + per-class NMS (ONNX NonMaxSuppression, IoU {nms_thr}, score >= {score_thr}); output `detections` [K,7] = batch index, x1, y1, x2, y2 (input pixels), score, class index. {e2e_note} |
| `model.json` | classes ({n_classes}), category ids, input size, thresholds, source runs, metrics at pack time, variants (runtime / precision) with their certificates |
{variant_rows}
| `test_image.*` | a test image; `reference.json` is the prediction on it (what `POST /predict` must return) |

Input contract: BGR, 0-255 float (no normalisation), letterbox to {h}x{w}: scale r = min({h}/h, {w}/w), resized
image in the TOP-LEFT corner, rest filled with 114. Boxes in original pixels = input-pixel boxes / r.

```python
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import decode_image
pred = Predictor.from_dir("{dirname}")   # default variant: {default}; variant="..." for another
det = pred.predict(decode_image(open("test_image.jpg", "rb").read()))
print(pred.to_json(det))
```
"""  # noqa: E501 - markdown table rows are one line each


def write_readme(packed: PackedModel) -> None:
    meta = packed.meta
    h, w = packed.input_size
    rows = "".join(f"| `{'`, `'.join(v.files)}` | variant `{n}`: {v.backend}, {meta['variants'][n].get('precision')}"
                   f"{' (default)' if n == packed.default_variant else ''} |\n"
                   for n, v in packed.variants.items() if n != "fp32")
    (packed.dir / "README.md").write_text(README.format(
        name=meta["name"], run_id=meta["run_id"], h=h, w=w, batch=meta.get("batch"), nms_thr=meta["nms_thr"],
        score_thr=meta["score_thr"], n_classes=len(meta["class_names"]), dirname=packed.dir.name,
        e2e_note="" if meta.get("e2e") else "(not packed for this model)", variant_rows=rows,
        default=packed.default_variant))
