"""Un-folding the BN-folded nano: the same function, and a stem whose SGD update is in line with the rest.

Issue 11 measured the cause of the full fine-tune's collapse: the folded stem conv (|W| ~ 0.5 on 0-255 pixels)
moved by lr * |g| / |W| ~ 1 per step while every other tensor moved < 1e-2. unfuse_model scales each conv by the
standard deviation of its input (the BN after it absorbs the factor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from coco_data import ANNOTATIONS, COCO_DEV, NANO_ONNX, need_data

from cvpipe.models.yolox import unfuse_model
from cvpipe.models.yolox.onnx_import import load_nano_from_onnx
from cvpipe.vision import letterbox, read_image

STEM = "backbone.backbone.stem.conv.conv.weight"


@pytest.fixture(scope="module")
def batch():
    need_data()
    coco = json.loads(ANNOTATIONS.read_text())
    images = coco["images"][:4]
    x = np.stack([letterbox(read_image(COCO_DEV / "images" / i["file_name"]), (256, 256))[0] for i in images])
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a)
    targets = torch.zeros(len(images), 60, 5)
    for k, info in enumerate(images):
        r = 256 / max(info["width"], info["height"])
        rows = [[0.0, (x0 + w / 2) * r, (y0 + h / 2) * r, w * r, h * r]
                for x0, y0, w, h in (a["bbox"] for a in boxes.get(info["id"], [])[:60])]
        if rows:
            targets[k, :len(rows)] = torch.tensor(rows)
    return torch.from_numpy(x), targets


def gradients(model, batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, gradient) of every conv weight after one training-mode backward pass."""
    images, targets = batch
    model.train()
    model.zero_grad()
    model(images, targets)["total_loss"].backward()
    return {n: (p.detach(), p.grad) for n, p in model.named_parameters() if p.grad is not None and p.dim() == 4}


def relative_updates(model, batch, lr):
    return {n: lr * float(g.norm()) / float(w.norm()) for n, (w, g) in gradients(model, batch).items()}


def row_updates(model, batch, lr) -> torch.Tensor:
    """lr * |g| / |w| of every output channel of every BatchNorm'd conv (each is scale-invariant on its own)."""
    rows = [lr * g.flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1).clamp(min=1e-12)
            for n, (w, g) in gradients(model, batch).items() if "preds" not in n]
    return torch.cat(rows)


def test_unfolded_model_computes_the_fused_function(batch):
    fused = load_nano_from_onnx(NANO_ONNX)
    model = unfuse_model(fused, [batch[0]])
    with torch.no_grad():
        ref, out = fused(batch[0]), model.eval()(batch[0])
    assert (out[..., 4:] - ref[..., 4:]).abs().max() < 1e-3
    assert (out[..., :4] - ref[..., :4]).abs().max() < 0.5  # pixels


def test_stem_update_is_in_line_with_the_other_layers(batch):
    fused = load_nano_from_onnx(NANO_ONNX)
    lr = 0.01 / 64 * 8
    before = relative_updates(unfuse_model(fused, [batch[0]], normalise_inputs=False), batch, lr)
    after = relative_updates(unfuse_model(fused, [batch[0]]), batch, lr)
    others = max(v for k, v in after.items() if k != STEM)
    # without the rescaling the stem is the outlier by orders of magnitude (what broke fine-tuning) ...
    assert before[STEM] > 20 * max(v for k, v in before.items() if k != STEM)
    # ... with it, it moves no faster than the fastest other tensor
    assert after[STEM] < others
    assert after[STEM] < before[STEM] / 100


def test_no_output_channel_moves_much_faster_than_the_rest(batch):
    """Issue 21: BatchNorm normalises each output channel on its own, so each row of a conv is scale-invariant
    and moves by lr * |g| / |w| ~ lr / |w|^2. Folding left some rows tiny (a stem channel with |w| 0.02 next to
    rows of ~8): that row moved by 0.93 of itself per step at the example's LR and the first epoch halved the
    AP. Un-folding gives every row of a conv the layer's RMS norm."""
    fused = load_nano_from_onnx(NANO_ONNX)
    lr = 0.01 / 128 * 8  # the COCO example's peak LR
    before = row_updates(unfuse_model(fused, [batch[0]], equalise_rows=False), batch, lr)
    after = row_updates(unfuse_model(fused, [batch[0]]), batch, lr)
    assert before.max() > 0.1  # the outlier rows that wrecked the first epoch
    assert after.max() < 0.02, after.topk(5).values
    assert after.max() < before.max() / 20
