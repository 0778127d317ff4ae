"""freeze_bn's steps (cvpipe.training.frozen_bn, issue 21): with BatchNorm frozen, each conv row's step keeps the
row's mean output on the training images and the row's norm, the two things BN in train mode makes invisible."""

from __future__ import annotations

import torch
from torch import nn

from cvpipe.training.frozen_bn import CentredSteps


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_a_step_keeps_each_rows_mean_output_and_norm():
    torch.manual_seed(0)
    model = nn.Sequential(ConvBN(4, 6), ConvBN(6, 6, groups=6)).eval()
    images = torch.rand(3, 4, 8, 8) * 5 + torch.tensor([1.0, -2.0, 3.0, 0.5])[None, :, None, None]
    steps = CentredSteps(model)
    steps.refresh(images)
    convs = [m.conv for m in model]
    inputs = [images, model[0](images)]
    means = [x.mean((0, 2, 3)) for x in inputs]
    start = [c.weight.detach().clone() for c in convs]
    steps.save()
    raw = []
    with torch.no_grad():
        for c in convs:  # a step of ~1 % of the weights, with a large part along each row's input mean and scale
            step = 0.01 * (torch.randn_like(c.weight) + c.weight.abs() + c.weight) * c.weight.abs().mean()
            raw.append(step)
            c.weight.add_(step)
    steps.project()

    def mean_shift(step, conv, mu):  # change of each row's mean output (input means broadcast over the taps)
        cout, cin_g = conv.weight.shape[:2]
        mu_rows = mu.view(conv.groups, cin_g).repeat_interleave(cout // conv.groups, 0)
        return (step.sum((2, 3)) * mu_rows).sum(1)

    for c, w0, mu, step in zip(convs, start, means, raw):
        before, after = mean_shift(step, c, mu), mean_shift(c.weight - w0, c, mu)
        # what is left is second order: restoring the row's norm rescales its whole mean output by ~|step|^2
        assert after.abs().max() < 2e-2 * before.abs().max(), (before, after)
        assert torch.allclose(c.weight.flatten(1).norm(dim=1), w0.flatten(1).norm(dim=1), rtol=1e-5)
        assert (c.weight - w0).norm() > 0.3 * step.norm()  # the rest of the step is taken


def test_refresh_leaves_the_models_modes():
    model = nn.Sequential(ConvBN(3, 4)).train()
    model[0].bn.eval()  # frozen
    CentredSteps(model).refresh(torch.rand(2, 3, 8, 8))
    assert model.training and model[0].conv.training and not model[0].bn.training
