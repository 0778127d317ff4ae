"""PackedModel: the packed-model contract (the `model` entity of model_pack), its one reader.

A packed model dir holds model.json (this contract), the ONNX graph(s) it names, a test image and
reference.json (the prediction the service must reproduce on it). Everything that consumes a packed model
(model_eval, model_test, the service, the swap check, `cvpipe predict`) calls `PackedModel.load(dir)`;
nothing else parses model.json. Torch-free: the Bento carries this module.

Hostile input: the dir may come from a shared or remote store. Every file model.json names must be a plain
name inside the dir (no absolute path, no `..`, no link out), class names and category ids must agree, and
the contract version must be one this code reads; anything else is a PackedModelError naming the field.

Variants (contract 2): the same model in several runtimes / precisions, each certified at pack time
(cvpipe.export.certify) and served only if it passed:

    "variants": {"fp32":     {"backend": "onnxruntime", "files": ["model.onnx"], "certificate": {...}},
                 "openvino": {"backend": "openvino", "files": ["model_openvino.xml", "model_openvino.bin"], ...}},
    "default_variant": "fp32",            # what a service runs when no variant is asked for
    "refused_variants": {"int8": {"reason": "...", "certificate": {...}}}   # reported, never loadable

The first file of a variant is the one its backend opens. A contract-1 dir (no "variants") has one: fp32.
`PackedModel.save_card(dir, card)` is the one writer of model.json, from the one schema `ModelCard`
(cvpipe.export.pack fills it once per pack). A PackedModel is also the `model` entity of model_pack: `save`
copies the pack into another dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cvpipe.vision import ClassMap

CONTRACT_VERSION = 2  # bump when a field changes meaning; readers refuse versions they do not know
READABLE_VERSIONS = (1, 2)
BACKENDS = ("onnxruntime", "openvino")


INPUT_CONTRACT = {"name": "images", "shape": ["batch", 3, "H", "W"], "dtype": "float32", "channels": "BGR",
                  "range": "0-255 (no mean/std)", "resize": "letterbox: one scale r = min(H/h, W/w), image in "
                  "the top-left corner", "pad_value": 114}
GRAPH_OUTPUTS = {
    "model.onnx": {"name": "output", "shape": ["batch", "N", "5+C"],
                   "layout": "cx, cy, w, h (input pixels), objectness, C class probabilities"},
    "model_e2e.onnx": {"name": "detections", "shape": ["K", 7],
                       "layout": "batch index, x1, y1, x2, y2 (input pixels; divide by r), score, class index; "
                                 "score = obj * best class prob, per-class NMS inside"},
}


class ModelCard(BaseModel):
    """model.json, the schema it is written from. Readers go through PackedModel (which also reads contract-1
    files and checks every name for hostile values); unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    contract_version: int = CONTRACT_VERSION
    name: str
    run_id: str | None = None
    source_run_ids: dict[str, str] = Field(default_factory=dict)
    created_at: str
    input_size: list[int]
    class_names: list[str]
    category_ids: list[int]
    input: dict[str, Any] = Field(default_factory=lambda: dict(INPUT_CONTRACT))
    outputs: dict[str, Any] = Field(default_factory=dict)  # graph file -> its output (GRAPH_OUTPUTS)
    onnx: str = "model.onnx"
    e2e: str | None = None
    batch: int | Literal["dynamic"] = "dynamic"
    test_image: str | None = None
    variants: dict[str, dict[str, Any]]
    default_variant: str = "fp32"
    refused_variants: dict[str, Any] = Field(default_factory=dict)
    default_choice: dict[str, Any] = Field(default_factory=dict)
    reference_detections: int | None = None
    score_thr: float = 0.25
    nms_thr: float = 0.45
    max_det: int = 300
    metrics: dict[str, Any] = Field(default_factory=dict)  # of the checkpoint, at pack time
    scale: str | None = None
    source: dict[str, Any] = Field(default_factory=dict)  # what was packed (checkpoint or ONNX file)
    parity: dict[str, Any] = Field(default_factory=dict)
    simplify: dict[str, Any] = Field(default_factory=dict)


class PackedModelError(ValueError):
    """A packed model dir that does not hold to the contract."""


def member(model_dir: Path, name: str, field: str) -> Path:
    """`name` as a file inside `model_dir`, or PackedModelError: the only way a named file is opened."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or "\x00" in name:
        raise PackedModelError(f"model.json {field}={name!r} is not a plain file name inside the model dir")
    path = model_dir / name
    try:
        inside = path.resolve().parent == model_dir.resolve()
    except OSError as e:
        raise PackedModelError(f"model.json {field}={name!r}: {e}") from None
    if not inside:
        raise PackedModelError(f"model.json {field}={name!r} points outside the model dir")
    return path


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # "onnxruntime" | "openvino"
    path: Path  # the file the backend opens (inside the model dir)
    files: tuple[str, ...]  # every file of the variant, plain names inside the model dir
    certificate: dict


@dataclass(frozen=True)
class PackedModel:
    dir: Path
    meta: dict  # model.json as read

    # ---- reading ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path) -> PackedModel:
        model_dir = Path(model_dir)
        path = model_dir / "model.json"
        if not path.is_file():
            raise PackedModelError(f"{model_dir} is not a packed model dir: no model.json")
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PackedModelError(f"{path}: unreadable model.json ({e})") from None
        if not isinstance(meta, dict):
            raise PackedModelError(f"{path}: model.json is not an object")
        model = cls(model_dir, meta)
        model.validate()
        return model

    # ---- writing (the one writer) ----------------------------------------------------------------------
    @classmethod
    def save_card(cls, model_dir: str | Path, card: ModelCard | dict) -> PackedModel:
        """Write model.json from the schema (stamped with this CONTRACT_VERSION) and read it back through the
        checks."""
        model_dir = Path(model_dir)
        card = card if isinstance(card, ModelCard) else ModelCard.model_validate(card)
        meta = {**card.model_dump(mode="json"), "contract_version": CONTRACT_VERSION}
        (model_dir / "model.json").write_text(json.dumps(meta, indent=2))
        return cls.load(model_dir)

    def save(self, directory: str | Path) -> None:
        """The pack's files into `directory` (the runner saving model_pack's `model` entity)."""
        from cvpipe.pipeline.entity import link_tree  # not in the Bento, which never saves a pack

        link_tree(self.dir, Path(directory))

    def validate(self) -> None:
        version = self.meta.get("contract_version", 1)
        if version not in READABLE_VERSIONS:
            raise PackedModelError(f"model.json contract_version {version!r}: this cvpipe reads {READABLE_VERSIONS}")
        try:
            self.classes, self.input_size  # noqa: B018 - parse, raising on bad values
        except (KeyError, TypeError, ValueError) as e:
            raise PackedModelError(f"model.json: {e}") from None
        onnx = self.onnx_path
        if not onnx.is_file():
            raise PackedModelError(f"model.json names {onnx.name!r}, which is not in {self.dir}")
        variants = self.variants  # parses and checks names, backends and paths
        default = self.meta.get("default_variant", "fp32")
        if default not in variants:
            raise PackedModelError(f"model.json default_variant {default!r} is not a packed variant "
                                   f"({', '.join(variants)})")

    # ---- fields -----------------------------------------------------------------------------------------
    @property
    def classes(self) -> ClassMap:
        names = self.meta["class_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError("class_names must be a non-empty list of strings")
        return ClassMap.from_names(names, self.meta.get("category_ids"))

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = (int(v) for v in self.meta["input_size"])
        if not (32 <= h <= 4096 and 32 <= w <= 4096 and h % 32 == 0 and w % 32 == 0):
            raise ValueError(f"input_size {[h, w]} must be multiples of 32 between 32 and 4096")
        return h, w

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    @property
    def onnx_path(self) -> Path:
        return member(self.dir, self.meta.get("onnx", "model.onnx"), "onnx")

    @property
    def test_image(self) -> Path | None:
        """The pack's smoke-test image; in packs older than model.json's `test_image` key, the one plain
        test_image.* file in the dir."""
        name = self.meta.get("test_image")
        if name is not None:
            return member(self.dir, name, "test_image")
        found = [p for p in sorted(self.dir.glob("test_image.*")) if p.is_file() and not p.is_symlink()]
        return found[0] if len(found) == 1 else None

    @property
    def reference(self) -> dict | None:
        path = self.dir / "reference.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def reference_for(self, variant: str | None = None) -> dict | None:
        """The prediction on the test image that a service running `variant` must return (reference.json
        for the default variant; the variant's own boxes otherwise, e.g. INT8's)."""
        ref = self.reference
        name = self.default_variant if variant is None else variant
        if ref is None or name == self.default_variant:
            return ref
        own = (self.meta.get("variants") or {}).get(name, {}).get("reference")
        if not isinstance(own, list):
            raise PackedModelError(f"model.json has no reference prediction for variant {name!r}")
        return {**ref, "detections": own}

    @property
    def thresholds(self) -> dict:
        return {"score_thr": float(self.meta.get("score_thr", 0.25)), "nms_thr": float(self.meta.get("nms_thr", 0.45)),
                "max_det": int(self.meta.get("max_det", 300))}

    @property
    def variants(self) -> dict[str, Variant]:
        """The servable variants (refused ones are not here); fp32 is always there."""
        raw = self.meta.get("variants") or {"fp32": {"backend": "onnxruntime", "files": [self.onnx_path.name]}}
        if not isinstance(raw, dict) or "fp32" not in raw:
            raise PackedModelError("model.json variants must be an object that holds 'fp32'")
        return {name: self._variant(name, spec) for name, spec in raw.items()}

    def _variant(self, name: str, spec: Any) -> Variant:
        field = f"variants.{name}"
        if not isinstance(spec, dict) or spec.get("backend") not in BACKENDS:
            raise PackedModelError(f"model.json {field}: needs a backend out of {BACKENDS}")
        files = spec.get("files")
        if not isinstance(files, list) or not files:
            raise PackedModelError(f"model.json {field}.files must be a non-empty list of file names")
        paths = [member(self.dir, f, f"{field}.files") for f in files]
        certificate = spec.get("certificate")
        return Variant(name, spec["backend"], paths[0], tuple(p.name for p in paths),
                       certificate if isinstance(certificate, dict) else {})

    @property
    def default_variant(self) -> str:
        return str(self.meta.get("default_variant", "fp32"))

    @property
    def refused_variants(self) -> dict:
        refused = self.meta.get("refused_variants") or {}
        return refused if isinstance(refused, dict) else {}

    def variant(self, name: str | None = None) -> Variant:
        """A servable variant by name (None: the pack's default), its files present, or PackedModelError."""
        name = self.default_variant if name is None else name
        variants = self.variants
        if name not in variants:
            why = f"it was refused at pack time: {self.refused_variants[name].get('reason')}" \
                if name in self.refused_variants else "it was not packed"
            raise PackedModelError(f"variant {name!r} is not servable ({why}); packed: {', '.join(variants)}")
        found = variants[name]
        missing = [f for f in found.files if not (self.dir / f).is_file()]
        if missing:
            raise PackedModelError(f"variant {name!r}: {', '.join(missing)} missing from {self.dir}")
        return found

    def files(self) -> list[str]:
        """Every file of the pack (model.json, graphs of every servable variant, test image, reference, README):
        what a copy of the pack (e.g. the Bento) must carry."""
        names = {"model.json", self.onnx_path.name, "reference.json", "README.md"}
        names |= {f for v in self.variants.values() for f in v.files}
        if self.test_image is not None:
            names.add(self.test_image.name)
        names |= {member(self.dir, n, "e2e").name for n in [self.meta.get("e2e")] if n}
        return sorted(n for n in names if (self.dir / n).is_file())

    def serving_contract(self) -> dict:
        """What a client of the service relies on: a model may replace a live one only if this is equal."""
        return {"input_size": list(self.input_size), **self.classes.to_json()}
