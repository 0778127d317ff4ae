"""Training parameters: each scale's augmentation defaults are YOLOX's (Megvii's exps/default/yolox_*.py)."""

from __future__ import annotations

import pytest

from cvpipe.training.dataset import AugmentConfig
from cvpipe.training.params import TrainParams


@pytest.mark.parametrize(("scale", "mixup", "mosaic_scale", "mosaic_prob"), [
    ("nano", False, (0.5, 1.5), 0.5), ("tiny", False, (0.5, 1.5), 1.0),
    ("s", True, (0.1, 2.0), 1.0), ("x", True, (0.1, 2.0), 1.0)])
def test_each_scale_gets_its_yolox_augmentation(scale, mixup, mosaic_scale, mosaic_prob):
    p = TrainParams(scale=scale, pretrained="none")
    assert (p.mixup, tuple(p.mosaic_scale or ()), p.mosaic_prob) == (mixup, mosaic_scale, mosaic_prob)
    a = AugmentConfig.from_params(p)  # what the training samples are drawn with
    assert (a.mixup_prob > 0, a.scale, a.mosaic_prob) == (mixup, mosaic_scale, mosaic_prob)


def test_what_the_config_says_wins_over_the_scale_default():
    p = TrainParams(scale="nano", pretrained="none", mixup=True, mosaic_scale=(0.1, 2.0), mosaic_prob=1.0)
    assert (p.mixup, p.mosaic_scale, p.mosaic_prob) == (True, (0.1, 2.0), 1.0)
    with pytest.raises(ValueError, match="scale range"):
        TrainParams(scale="nano", pretrained="none", mosaic_scale=(2.0, 1.0))
