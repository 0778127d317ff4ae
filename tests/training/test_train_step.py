"""End-to-end training on tiny synthetic data through the model_train step (YOLOX-Nano at 64 px)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from step_context import run_step, step_context

from cvpipe.models.yolox import build_yolox, load_checkpoint
from cvpipe.steps.model_train import ModelTrainParams
from cvpipe.training.run import run_training

TINY = dict(scale="nano", pretrained="none", img_size=64, batch_size=2, epochs=2, no_aug_epochs=1, warmup_epochs=0.5,
            eval_batch_size=4, workers=0, seed=3)


def outputs(root):
    out = {n: root / n for n in ("checkpoints", "curves", "test_image")}
    for p in out.values():
        p.mkdir(parents=True)
    return out


def test_step_writes_checkpoints_curves_and_test_image(synthetic, tmp_path):
    ds_dir, images_dir = synthetic
    ctx = step_context(tmp_path / "out", "model_train")
    out = ctx.outputs
    summary = run_step(ctx, ModelTrainParams(**TINY), dataset=ds_dir, images=images_dir)

    assert summary["epochs"] == 2 and summary["train_images"] == 4 and summary["val_images"] == 2
    assert summary["best_epoch"] in (1, 2) and summary["best_ap"] is not None
    assert summary["best_ap50"] is not None and summary["best_ap50"] >= summary["best_ap"]
    json.dumps(summary)
    rows = list(csv.DictReader(open(out["curves"] / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # issue 11: epoch 0 = the start, before training
    rows = rows[1:]
    assert rows[0]["augment"] == "True" and rows[1]["augment"] == "False"
    assert float(rows[1]["l1_loss"]) > 0 and float(rows[0]["l1_loss"]) == 0  # L1 only in the no-aug epoch
    assert (out["curves"] / "curves.png").stat().st_size > 1000

    for name in ("last.pt", "best.pt"):
        model = build_yolox("nano", num_classes=2)
        res = load_checkpoint(model, out["checkpoints"] / name)
        assert res.meta["class_names"] == ["red", "green"]
        assert res.meta["category_ids"] == [11, 22]
        assert res.meta["input_size"] == [64, 64] and res.meta["scale"] == "nano" and res.meta["fused"] is False
        assert "AP" in res.meta["metrics"]
    last = torch.load(out["checkpoints"] / "last.pt", weights_only=True)
    assert last["meta"]["epoch"] == 2 and "optimizer" in last and last["extra"]["epoch"] == 2

    gt = json.loads((out["test_image"] / "ground_truth.json").read_text())
    meta = json.loads((out["test_image"] / "meta.json").read_text())
    assert meta["split"] == "val" and (out["test_image"] / gt["file"]).is_file()
    assert {b["category_id"] for b in gt["boxes"]} <= {11, 22} and meta["num_objects"] >= 1
    assert {"red", "green"} >= {b["category_name"] for b in gt["boxes"]}


def test_resume_gives_the_same_weights(synthetic, tmp_path):
    ds_dir, images_dir = synthetic
    params = ModelTrainParams(**TINY)
    full = outputs(tmp_path / "full")
    run_training(params, ds_dir, images_dir, full)

    part = outputs(tmp_path / "part")
    run_training(params, ds_dir, images_dir, part, stop_after_epoch=1)
    assert torch.load(part["checkpoints"] / "last.pt", weights_only=True)["extra"]["epoch"] == 1
    resumed = outputs(tmp_path / "resumed")
    params_resume = params.model_copy(update={"resume": str(part["checkpoints"] / "last.pt")})
    run_training(params_resume, ds_dir, images_dir, resumed)

    a = torch.load(full["checkpoints"] / "last.pt", weights_only=True)
    b = torch.load(resumed["checkpoints"] / "last.pt", weights_only=True)
    for key in ("model",):  # EMA weights
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), name
    for name, t in a["extra"]["model"].items():  # raw weights
        assert torch.equal(t, b["extra"]["model"][name]), name
    assert len(b["extra"]["history"]) == 3  # issue 11: epoch 0 (the start) + 2 epochs
    # and a run with another seed differs (the comparison above can fail)
    other = outputs(tmp_path / "other")
    run_training(params.model_copy(update={"seed": 4}), ds_dir, images_dir, other)
    c = torch.load(other["checkpoints"] / "last.pt", weights_only=True)
    assert any(not torch.equal(t, c["model"][n]) for n, t in a["model"].items())


def test_loss_decreases_when_overfitting(synthetic, tmp_path):
    ds_dir, images_dir = synthetic
    no_aug = dict(mosaic=False, mixup=False, affine=False, hsv=False, flip=False)
    params = ModelTrainParams(**dict(TINY, epochs=30, no_aug_epochs=0, warmup_epochs=0, lr_per_img=0.01,
                                     eval_interval=100, ema=False, **no_aug))
    out = outputs(tmp_path / "out")
    run_training(params, ds_dir, images_dir, out)
    rows = list(csv.DictReader(open(out["curves"] / "metrics.csv")))
    losses = [float(r["total_loss"]) for r in rows]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_bad_inputs_fail_clearly(synthetic, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelTrainParams(img_size=100)
    with pytest.raises(ValueError, match="scale: nano"):
        ModelTrainParams(scale="s", pretrained="nano-onnx")
    ds_dir, images_dir = synthetic
    with pytest.raises(ValueError, match="divisible"):
        run_training(ModelTrainParams(**dict(TINY, batch_size=3)), ds_dir, images_dir, outputs(tmp_path / "o"),
                     dist=type("D", (), {"world_size": 2, "rank": 0, "is_main": True, "device": torch.device("cpu")})())


def test_freeze_bn_keeps_running_stats(synthetic, tmp_path):
    ds_dir, images_dir = synthetic
    out = outputs(tmp_path / "out")
    run_training(ModelTrainParams(**dict(TINY, epochs=1, freeze_bn=True)), ds_dir, images_dir, out)
    raw = torch.load(out["checkpoints"] / "last.pt", weights_only=True)["extra"]["model"]
    fresh = build_yolox("nano", 2).state_dict()
    bn_keys = [k for k in raw if k.endswith((".bn.running_mean", ".bn.running_var", ".bn.weight"))]
    assert bn_keys and all(torch.equal(raw[k], fresh[k]) for k in bn_keys)
    conv = "backbone.backbone.stem.conv.conv.weight"
    assert conv in raw and raw[conv].shape == fresh[conv].shape


def test_freeze_backbone_keeps_every_backbone_tensor(synthetic, tmp_path):
    """A frozen backbone does not move at all: weights and BatchNorm running statistics (in train mode BN would
    follow the batches while the weights stay fixed; issue 21)."""
    ds_dir, images_dir = synthetic
    out = outputs(tmp_path / "out")
    run_training(ModelTrainParams(**dict(TINY, epochs=1, freeze_backbone=True)), ds_dir, images_dir, out)
    start = torch.load(out["checkpoints"] / "start.pt", weights_only=True)["model"]
    raw = torch.load(out["checkpoints"] / "last.pt", weights_only=True)["extra"]["model"]
    backbone = [k for k in raw if k.startswith("backbone.")]
    assert any(k.endswith(".bn.running_mean") for k in backbone)
    moved = [k for k in backbone if not torch.equal(raw[k], start[k])]
    assert not moved, moved[:5]
    head = [k for k in raw if k.startswith("head.") and k.endswith(".weight")]
    assert any(not torch.equal(raw[k], start[k]) for k in head)  # the head did train


def test_auto_freezes_the_backbone_only_when_the_start_knows_every_class(synthetic, tmp_path):
    """freeze_backbone: auto (the default) trains every layer from a start that does not know the data's classes
    and only the head when it does: here a retrain from this data's own checkpoint (issue 21)."""
    ds_dir, images_dir = synthetic
    first = run_training(ModelTrainParams(**dict(TINY, epochs=1)), ds_dir, images_dir, outputs(tmp_path / "a"))
    assert first["hyperparameters"]["frozen"] == "none"
    again = dict(TINY, epochs=1, pretrained=str(tmp_path / "a" / "checkpoints" / "best.pt"))
    out = outputs(tmp_path / "b")
    second = run_training(ModelTrainParams(**again), ds_dir, images_dir, out)
    assert second["hyperparameters"]["frozen"] == "backbone"
    start = torch.load(out["checkpoints"] / "start.pt", weights_only=True)["model"]
    raw = torch.load(out["checkpoints"] / "last.pt", weights_only=True)["extra"]["model"]
    assert all(torch.equal(raw[k], start[k]) for k in raw if k.startswith("backbone."))
    # asked explicitly, every layer trains from the same start
    third = run_training(ModelTrainParams(**dict(again, freeze_backbone=False)), ds_dir, images_dir,
                         outputs(tmp_path / "c"))
    assert third["hyperparameters"]["frozen"] == "none"


def test_max_train_images_caps_the_train_split(synthetic, tmp_path):
    ds_dir, images_dir = synthetic
    params = ModelTrainParams(**dict(TINY, epochs=1, no_aug_epochs=1, max_train_images=2))
    summary = run_training(params, ds_dir, images_dir, outputs(tmp_path / "out"))
    assert summary["train_images"] == 2 and summary["val_images"] == 2


def test_step_module_imports_without_torch():
    """`cvpipe --help` discovers every step: model_train must not pull torch / cv2 in at import time."""
    import subprocess
    import sys

    code = ("import sys, cvpipe.steps.model_train; "
            "print(sorted(m for m in ('torch', 'cv2', 'cvpipe.training.trainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
