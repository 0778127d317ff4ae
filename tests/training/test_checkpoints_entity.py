"""The checkpoints entity (best.pt, last.pt, start.pt, checkpoints.json) and where training started."""

from __future__ import annotations

import json

import pytest

from cvpipe.models.yolox import build_yolox, save_checkpoint
from cvpipe.models.yolox.weights import WeightsUnavailable
from cvpipe.training.checkpoints import Checkpoints
from cvpipe.training.model_init import build_model


def test_save_epoch_and_load(tmp_path):
    model = build_yolox("nano", 2)
    d = tmp_path / "checkpoints"
    meta = {"class_names": ["a", "b"], "input_size": [64, 64], "pretrained": {"source": "x", "sha256": "ab"}}
    Checkpoints.save_epoch(d, model, dict(meta, epoch=1), improved=True)
    ck = Checkpoints.save_epoch(d, model, dict(meta, epoch=2), improved=False)
    assert ck.best == d / "best.pt" and ck.last == d / "last.pt"
    loaded = Checkpoints.load(d)
    assert loaded.meta["epoch"] == 1 == ck.meta["epoch"]  # best is still epoch 1
    assert loaded.class_names == ["a", "b"] and loaded.input_size == [64, 64]
    assert loaded.pretrained == {"source": "x", "sha256": "ab"}
    net, _ = loaded.load_model()
    assert net.num_classes == 2
    (d / "checkpoints.json").unlink()  # a directory of plain files still loads (best.pt's own metadata)
    assert Checkpoints.load(d).meta["epoch"] == 1


def test_epoch_0_is_kept_as_the_start(tmp_path):
    """start.pt is the model of epoch 0 (what training began from), kept however later epochs go: model_pack
    packs it so model_eval can say what fine-tuning gained."""
    import torch

    model = build_yolox("nano", 2)
    d = tmp_path / "checkpoints"
    meta = {"class_names": ["a", "b"], "input_size": [64, 64]}
    Checkpoints.save_epoch(d, model, dict(meta, epoch=0), improved=False)
    start_weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ck = Checkpoints.save_epoch(d, model, dict(meta, epoch=1), improved=True)
    for loaded in (ck, Checkpoints.load(d)):
        assert loaded.start == d / "start.pt" and loaded.path("start") == loaded.start
    start, _ = Checkpoints.load(d).load_model("start")
    best, _ = Checkpoints.load(d).load_model("best")
    key = next(k for k, v in start_weights.items() if v.is_floating_point())
    assert torch.equal(start.state_dict()[key], start_weights[key])
    assert not torch.equal(best.state_dict()[key], start_weights[key])
    (d / "start.pt").unlink()  # an older run without it: no start, not an error
    assert Checkpoints.load(d).start is None and Checkpoints.load(d).best == d / "best.pt"


def test_index_cannot_point_outside_its_directory(tmp_path):
    outside = tmp_path / "secret.pt"
    save_checkpoint(build_yolox("nano", 2), outside)
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "checkpoints.json").write_text(json.dumps({"format": "cvpipe-checkpoints", "best": "../secret.pt"}))
    with pytest.raises(FileNotFoundError):
        Checkpoints.load(d)
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        Checkpoints.load(tmp_path / "empty")


def test_unavailable_pretrained_fails_by_default_and_opt_out_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPIPE_WEIGHTS_DIR", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/no/such/yolox_s.pth"  # nothing listens on the discard port
    with pytest.raises(WeightsUnavailable, match="could not download"):
        build_model("nano", 3, url)
    with pytest.raises(FileNotFoundError):
        build_model("nano", 3, str(tmp_path / "missing.pth"))
    model, info = build_model("nano", 3, url, required=False)
    assert info["loaded"] is False and info["path"] is None and model.num_classes == 3


def test_start_is_recorded_with_its_digest(tmp_path):
    path = tmp_path / "start.pt"
    save_checkpoint(build_yolox("nano", 80), path)
    model, info = build_model("nano", 2, str(path), class_names=["x", "y"])
    import hashlib

    assert info["path"] == str(path) and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["loaded"] and model.num_classes == 2 and info["reinitialized"]
