"""The model_pack step function end to end: bring-your-own nano (session fixture) and a trained checkpoint."""
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from step_context import run_step, step_context

from cvpipe.export.pack import read_class_list
from cvpipe.steps.model_pack import ModelPackParams


def test_byo_pack_outputs(packed):
    s = packed["summary"]
    assert s["parity_max_scaled_diff"] < 1e-4 and s["detections_on_test_image"] > 0
    assert s["bento"] == "yolox_nano.bento" and s["onnx_bytes"] > 1_000_000
    model = packed["model"]
    names = {p.name for p in model.iterdir()}
    assert {"model.onnx", "model_e2e.onnx", "model.json", "reference.json", "README.md", "test_image.jpg"} <= names
    meta = json.loads((model / "model.json").read_text())
    assert meta["run_id"] == packed["run_id"] and meta["input_size"] == [416, 416]
    assert meta["class_names"][0] == "person" and meta["category_ids"][-1] == 90
    assert meta["input"]["channels"] == "BGR" and meta["input"]["pad_value"] == 114
    assert meta["batch"] == 1  # Megvii's export has a fixed batch of 1, kept
    ref = json.loads((model / "reference.json").read_text())
    assert len(ref["detections"]) == s["detections_on_test_image"]
    bento = packed["bento"]
    assert (bento / "Dockerfile").read_text().startswith("\n# ====") or "FROM" in (bento / "Dockerfile").read_text()
    assert "bentoml containerize" in (bento / "README.md").read_text()


def test_bento_holds_only_torch_free_code_and_lists_no_torch(packed):
    with tarfile.open(packed["bento"] / packed["summary"]["bento"]) as tar:
        names = tar.getnames()
        info = yaml.safe_load(tar.extractfile("./bento.yaml").read())
        reqs = tar.extractfile("./env/python/requirements.txt").read().decode()
    py = sorted(n for n in names if n.endswith(".py"))
    assert "./src/cvpipe/serving/service.py" in py and not any("models/yolox" in n or "steps" in n for n in py)
    assert "torch" not in reqs and "onnxruntime" in reqs and "bentoml" in reqs
    assert info["args"]["model_tag"] == f"yolox_nano:{packed['run_id']}"
    assert any(n.endswith("models/yolox_nano/" + packed["run_id"] + "/model.onnx") for n in names)


def test_service_modules_import_without_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import cvpipe.serving.service, cvpipe.inference.predictor, cvpipe.vision\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def _ctx(tmp_path, run_id="test-run"):
    return step_context(tmp_path, "model_pack", run_id=run_id,
                       input_runs={"checkpoints": "train-1", "test_image": "train-1"})


def test_trained_checkpoint_pack(tmp_path, person_image):
    import torch

    from cvpipe.inference.predictor import Predictor
    from cvpipe.models.yolox import build_yolox, save_checkpoint

    torch.manual_seed(0)
    ckpts, test_image = tmp_path / "checkpoints", tmp_path / "test_image"
    ckpts.mkdir()
    test_image.mkdir()
    save_checkpoint(build_yolox("nano", 3), ckpts / "best.pt",
                    meta={"class_names": ["cat", "dog", "fox"], "category_ids": [3, 5, 9], "input_size": [128, 160],
                          "metrics": {"AP": 0.12}})
    shutil.copyfile(person_image[0], test_image / "image.jpg")
    (test_image / "ground_truth.json").write_text("[]")
    ctx = _ctx(tmp_path)
    summary = run_step(ctx, ModelPackParams(bento=False, score_thr=0.3), checkpoints=ckpts, test_image=test_image)
    meta = json.loads((ctx.outputs["model"] / "model.json").read_text())
    assert summary["parity_max_scaled_diff"] < 1e-4 and summary["bento"] is None
    assert meta["input_size"] == [128, 160] and meta["category_ids"] == [3, 5, 9]
    assert meta["metrics"] == {"AP": 0.12}
    assert meta["source_run_ids"] == {"checkpoints": "train-1", "test_image": "train-1"}
    assert meta["batch"] == "dynamic" and meta["source"]["checkpoint"] == "best.pt"
    pred = Predictor.from_dir(ctx.outputs["model"])
    assert pred.class_names == ["cat", "dog", "fox"] and pred.input_size == (128, 160)
    (tmp_path / "again").mkdir()
    with pytest.raises(FileNotFoundError, match="'last'"):
        run_step(_ctx(tmp_path / "again"), ModelPackParams(checkpoint="last", bento=False), checkpoints=ckpts,
                 test_image=test_image)


def test_clear_errors_without_a_model_or_image(tmp_path, person_image):
    with pytest.raises(ValueError, match="nothing to pack"):
        run_step(_ctx(tmp_path), ModelPackParams(test_image=person_image[0]))
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="test image"):
        run_step(_ctx(tmp_path / "b"), ModelPackParams())
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="class_names"):
        run_step(_ctx(tmp_path / "c"), ModelPackParams(onnx="weights/yolox_nano/yolox_nano.onnx",
                                                      test_image=person_image[0]))
    with pytest.raises(ValueError, match="multiples of 32"):
        ModelPackParams(input_size=(100, 100))


def test_class_list_formats(tmp_path):
    (tmp_path / "c.txt").write_text("cat\n\ndog\n")
    (tmp_path / "c.json").write_text(json.dumps({"categories": [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}]}))
    assert read_class_list(tmp_path / "c.txt") == (["cat", "dog"], None)
    assert read_class_list(tmp_path / "c.json") == (["cat", "dog"], [2, 7])
    assert read_class_list(["a"]) == (["a"], None)


def test_an_explicit_input_size_wins_and_model_json_is_written_once(tmp_path, person_image, monkeypatch):
    """A checkpoint trained at 128x160 packed at an explicit 160x160 is exported at 160x160 (YOLOX is fully
    convolutional); model.json is written once per pack, from the ModelCard."""
    import torch

    from cvpipe.inference.packed import PackedModel
    from cvpipe.models.yolox import build_yolox, save_checkpoint

    torch.manual_seed(0)
    ckpts, test_image = tmp_path / "checkpoints", tmp_path / "test_image"
    ckpts.mkdir()
    test_image.mkdir()
    save_checkpoint(build_yolox("nano", 2), ckpts / "best.pt",
                    meta={"class_names": ["cat", "dog"], "category_ids": [3, 5], "input_size": [128, 160]})
    shutil.copyfile(person_image[0], test_image / "image.jpg")
    writes = []
    real = PackedModel.save_card.__func__
    counted = classmethod(lambda cls, d, card: writes.append(d) or real(cls, d, card))
    monkeypatch.setattr(PackedModel, "save_card", counted)
    ctx = _ctx(tmp_path)
    run_step(ctx, ModelPackParams(bento=False, input_size=(160, 160), variants=[]), checkpoints=ckpts,
             test_image=test_image)
    meta = json.loads((ctx.outputs["model"] / "model.json").read_text())
    assert meta["input_size"] == [160, 160] and len(writes) == 1


def test_an_explicit_input_size_that_does_not_fit_a_fixed_onnx_is_an_error(tmp_path, person_image):
    from coco_data import ANNOTATIONS, NANO_ONNX

    with pytest.raises(ValueError, match=r"input_size \(320, 320\) does not fit yolox_nano.onnx.*\(416, 416\)"):
        run_step(_ctx(tmp_path), ModelPackParams(onnx=NANO_ONNX, class_names=ANNOTATIONS, input_size=(320, 320),
                                                 test_image=person_image[0], bento=False))
