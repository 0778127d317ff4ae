"""One locator of the shipped YOLOX-Nano ONNX (cvpipe.models.pretrained_files) for training's start and
model_eval's pretrained baseline: found from any working directory, a copy in the working directory first,
and importable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from coco_data import NANO_ONNX, REPO, need_data

from cvpipe.models import pretrained_files
from cvpipe.models.pretrained_files import find_nano_onnx


def test_model_eval_finds_the_shipped_weights_from_another_directory(tmp_path, monkeypatch):
    from cvpipe.evaluation.baseline import pretrained_path
    from cvpipe.steps.model_eval import ModelEvalParams, reference_model, resolve_reference
    from cvpipe.vision import ClassMap

    need_data()
    monkeypatch.chdir(tmp_path)  # no weights/ here
    assert pretrained_path(None, None).resolve() == NANO_ONNX.resolve()
    # a training summary naming a start model_eval cannot run (a .pth) falls back to the same file
    assert pretrained_path(None, {"pretrained": {"path": "/elsewhere/yolox_nano.pth"}}).resolve() == NANO_ONNX.resolve()
    params = ModelEvalParams(baseline="pretrained")
    start = reference_model(params, resolve_reference(params, None, {"model": "pack-1"}).load(), (416, 416),
                            ClassMap.from_names(["person", "car"], [1, 3]))
    assert start is not None and start.kind == "pretrained" and start.name == "yolox_nano.onnx"


def test_a_copy_in_the_working_directory_comes_first(tmp_path, monkeypatch):
    need_data()
    monkeypatch.chdir(tmp_path)
    assert find_nano_onnx().resolve() == NANO_ONNX.resolve()  # beside the package (the checkout)
    own = tmp_path / "weights" / "yolox_nano" / "yolox_nano.onnx"
    own.parent.mkdir(parents=True)
    own.write_bytes(NANO_ONNX.read_bytes())
    assert find_nano_onnx() == own
    assert pretrained_files.nano_onnx_candidates()[1] == REPO / "weights" / "yolox_nano" / "yolox_nano.onnx"


def test_missing_weights_name_every_place_looked_at(tmp_path, monkeypatch):
    from cvpipe.evaluation.baseline import pretrained_path

    places = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    monkeypatch.setattr(pretrained_files, "nano_onnx_candidates", lambda: places)
    with pytest.raises(FileNotFoundError, match="a.onnx, .*b.onnx"):
        find_nano_onnx()
    assert pretrained_path(None, None) is None  # model_eval: no pretrained baseline, not a crash


def test_the_locator_and_model_eval_stay_torch_free():
    code = ("import sys, cvpipe.models.pretrained_files, cvpipe.steps.model_eval; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
