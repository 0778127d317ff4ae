from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cvpipe.training.ema import ModelEMA
from cvpipe.training.schedule import WarmCosineLR
from cvpipe.training.trainer import param_groups


def test_schedule_shape():
    s = WarmCosineLR(0.01, iters_per_epoch=10, epochs=10, warmup_epochs=2, no_aug_epochs=2, min_lr_ratio=0.05)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.01 * (5 / 20) ** 2)  # quadratic warm-up
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21]))  # rising to the peak
    assert lrs[20] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[20:80], lrs[21:81]))  # cosine decay
    assert lrs[50] == pytest.approx(0.0005 + 0.5 * (0.01 - 0.0005) * (1 + math.cos(math.pi * 30 / 60)))
    assert lrs[80:] == [pytest.approx(0.0005)] * 20  # flat minimum in the no-aug epochs


def test_schedule_degenerate_all_no_aug():
    s = WarmCosineLR(0.01, 4, 2, warmup_epochs=0, no_aug_epochs=5)
    assert [s(i) for i in range(8)] == [pytest.approx(0.0005)] * 8


def test_ema_ramp_and_average():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.9, ramp=1.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1))
    assert torch.allclose(ema.ema.weight, torch.full((1, 2), 1 - d1))
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2))
    assert torch.allclose(ema.ema.weight, torch.full((1, 2), d2 * (1 - d1) + (1 - d2)))
    assert not ema.ema.weight.requires_grad


def test_param_groups_decay_only_conv_weights():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=True))
    bn_w, weights, biases = param_groups(m, 5e-4)
    assert bn_w["params"] == [m[1].weight] and bn_w["weight_decay"] == 0
    assert weights["params"] == [m[0].weight, m[2].weight] and weights["weight_decay"] == 5e-4
    assert {id(p) for p in biases["params"]} == {id(m[0].bias), id(m[1].bias), id(m[2].bias)}
    assert biases["weight_decay"] == 0
