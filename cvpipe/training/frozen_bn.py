"""Training steps for a model whose BatchNorms are frozen (`freeze_bn`): keep each conv's steps inside what
BatchNorm in train mode would let them do.

In train mode a BatchNorm subtracts its channel's batch mean and divides by its batch std, so the loss cannot
see (and the gradient has no part along) a step that shifts a conv row's mean output or scales the row. Frozen,
in eval mode, BN is a fixed affine map and nothing re-centres: a step of 0.1 % of a row along its input's mean
shifts the channel's output, and the shifts compound with depth. Measured on the COCO sample at the COCO
setting's peak LR (issue 21): after 4 steps the output std of the deepest backbone blocks had moved by 12 % with
BN frozen (1.3 % in train mode) and the held-out AP fell 0.269 -> 0.245 -> 0.202 (steps 4, 8); removing only
the scaling part changed nothing (0.245), removing the mean-shift and scaling parts kept it (0.268 at step 4).

`CentredSteps.project` takes those two parts out of each step of every conv followed by a frozen BN; the input
means come from plain training images and are refreshed every epoch.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_pairs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Convs that feed a BatchNorm (modules with `.conv` and `.bn`, YOLOX's ConvBNAct), by module name."""
    return {name: m.conv for name, m in model.named_modules()
            if isinstance(getattr(m, "conv", None), nn.Conv2d)
            and isinstance(getattr(m, "bn", None), nn.modules.batchnorm._NormBase)}


class CentredSteps:
    def __init__(self, model: nn.Module):
        self.model = model
        self.convs = {n: c for n, c in conv_bn_pairs(model).items() if c.weight.requires_grad}
        self.mean_dirs: dict[str, torch.Tensor] = {}
        self.before: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def refresh(self, images: torch.Tensor) -> None:
        """Per conv row: the unit weight direction that shifts its mean output, from its input's channel means
        on `images` (run in eval mode; the model's modes are restored)."""
        means: dict[str, torch.Tensor] = {}
        hooks = [c.register_forward_hook(lambda mod, inp, out, n=n: means.__setitem__(n, inp[0].mean((0, 2, 3))))
                 for n, c in self.convs.items()]
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            self.model(images)
        finally:
            for h in hooks:
                h.remove()
            for m, training in modes.items():
                m.train(training)
        for n, mu in means.items():
            w = self.convs[n].weight
            cout, cin_g, kh, kw = w.shape
            groups = self.convs[n].groups
            u = mu.view(groups, cin_g).repeat_interleave(cout // groups, 0)[:, :, None, None].expand(w.shape)
            self.mean_dirs[n] = (u / u.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None, None]).contiguous()

    @torch.no_grad()
    def save(self) -> None:
        """Call before the optimizer step."""
        self.before = {n: c.weight.detach().clone() for n, c in self.convs.items()}

    @torch.no_grad()
    def project(self) -> None:
        """Call after the optimizer step: take out of each row's step its parts along the row's mean-shift
        direction and along the row itself (both at once: the two are not orthogonal), then give the row back its
        norm exactly (what is left is second order in the step)."""
        for n, c in self.convs.items():
            w0, w = self.before[n], c.weight
            step = (w - w0).flatten(1)
            rows = w0.flatten(1)
            basis = [self.mean_dirs[n].flatten(1)] if n in self.mean_dirs else []
            basis.append(rows)
            for k, b in enumerate(basis):  # Gram-Schmidt per row
                for prev in basis[:k]:
                    b = b - (b * prev).sum(1, keepdim=True) * prev
                b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-12)
                basis[k] = b
                step -= (step * b).sum(1, keepdim=True) * b
            new = rows + step
            r0, r1 = rows.norm(dim=1), new.norm(dim=1).clamp(min=1e-12)
            w.copy_((new * torch.where(r0 > 0, r0 / r1, torch.ones_like(r0))[:, None]).view_as(w))
        self.before = {}
