"""mmdetection 3.x runner checkpoints (mmengine: message_hub with HistoryBuffer objects, optimizer,
param_schedulers, meta, state_dict) load without running code from the file: foreign classes are stubbed under
the weights-only unpickler, and what was skipped is reported."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cvpipe.models.yolox import build_yolox, load_checkpoint, save_checkpoint
from cvpipe.models.yolox.checkpoints import CheckpointError, load_model, read_checkpoint

EXECUTED: list[str] = []


def _record(what):
    EXECUTED.append(what)
    return what


class HistoryBuffer:  # stands for mmengine.logging.HistoryBuffer: a custom class with custom state
    def __init__(self):
        self._log_history = np.arange(5.0)
        self._count_history = np.ones(5)

    def __setstate__(self, state):
        _record("HistoryBuffer.__setstate__")
        self.__dict__.update(state)


class Payload:  # what a hostile file would carry: unpickling it calls a function
    def __reduce__(self):
        return (_record, ("Payload called",))


def runner_checkpoint(path, model):
    save_checkpoint(model, path, {"class_names": ["a", "b", "c"]}, layout="mmdet")
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"].update(epoch=12, iter=3000, mmengine_version="0.10.4", hook_msgs={"payload": Payload()})
    ckpt["message_hub"] = {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"epoch": 12}}
    ckpt["optimizer"] = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.01}]}
    ckpt["param_schedulers"] = [{"begin": 0, "end": 5, "last_step": 3000}]
    torch.save(ckpt, path)


def test_runner_checkpoint_loads_tensors_only_and_says_what_was_skipped(tmp_path):
    model = build_yolox("nano", 3)
    path = tmp_path / "epoch_12.pth"
    runner_checkpoint(path, model)
    with pytest.raises(pickle.UnpicklingError):  # the plain weights-only load refuses it: the case this handles
        torch.load(path, weights_only=True)

    skipped: list[str] = []
    ckpt = read_checkpoint(path, skipped)
    assert EXECUTED == []  # nothing from the file ran
    assert any("message_hub.log_scalars.train/loss" in s and "HistoryBuffer" in s for s in skipped)
    assert any("meta.hook_msgs.payload" in s for s in skipped)
    assert ckpt["message_hub"]["runtime_info"] == {"epoch": 12}  # plain parts kept
    assert ckpt["param_schedulers"][0]["last_step"] == 3000 and ckpt["meta"]["epoch"] == 12

    loaded, result = load_model(path)
    assert EXECUTED == [] and result.layout == "mmdet" and loaded.num_classes == 3
    assert len(result.skipped) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    fresh = build_yolox("nano", 3)
    assert load_checkpoint(fresh, path).skipped == result.skipped


def test_garbage_is_still_refused(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        read_checkpoint(path)
