"""PackedModel: the packed-model contract (the `model` entity of model_pack), its one reader.

A packed model dir holds model.json (this contract), the ONNX graph(s) it names, a test image and
reference.json (the prediction the service must reproduce on it). Everything that consumes a packed model
(model_eval, model_test, the service, the swap check, `cvpipe predict`) calls `PackedModel.load(dir)`;
nothing else parses model.json. Torch-free: the Bento carries this module.

Hostile input: the dir may come from a shared or remote store. Every file model.json names must be a plain
name inside the dir (no absolute path, no `..`, no link out), class names and category ids must agree, and
the contract version must be one this code reads; anything else is a PackedModelError naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cvpipe.vision import ClassMap

CONTRACT_VERSION = 1  # bump when a field changes meaning; readers refuse versions they do not know
READABLE_VERSIONS = (1,)


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
class PackedModel:
    dir: Path
    meta: dict  # model.json as read

    # ---- reading ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path) -> "PackedModel":
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
        name = self.meta.get("test_image")
        return None if name is None else member(self.dir, name, "test_image")

    @property
    def reference(self) -> dict | None:
        path = self.dir / "reference.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def thresholds(self) -> dict:
        return {"score_thr": float(self.meta.get("score_thr", 0.25)), "nms_thr": float(self.meta.get("nms_thr", 0.45)),
                "max_det": int(self.meta.get("max_det", 300))}

    def serving_contract(self) -> dict:
        """What a client of the service relies on: a model may replace a live one only if this is equal."""
        return {"input_size": list(self.input_size), **self.classes.to_json()}
