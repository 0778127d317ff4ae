from __future__ import annotations

import numpy as np
import pytest
import torch

from cvpipe.data.schema import DetectionDataset
from cvpipe.training.dataset import AugmentConfig, EpochSampler, YoloxTrainDataset, collate, read_image
from cvpipe.vision import letterbox


@pytest.mark.parametrize("cache", [True, False])
def test_no_aug_sample_is_the_letterbox_with_scaled_targets(synthetic, cache):
    ds_dir, images_dir = synthetic
    ds = DetectionDataset.load(ds_dir).split("train")
    data = YoloxTrainDataset(ds, images_dir, 96, AugmentConfig(), epochs=2, no_aug_epochs=1, cache=cache)
    rec = data.records[1]  # a 128 x 160 image: letterbox scale 0.6
    image, targets, image_id = data[(1, 1)]  # epoch 1 = the no-aug epoch
    expected, r = letterbox(read_image(rec["path"]), (96, 96))
    assert image_id == rec["image_id"]
    assert torch.equal(image, torch.from_numpy(expected))
    assert len(targets) == 2  # the crowd box is not a target
    anns = ds.annotations[(ds.annotations.image_id == image_id) & (ds.annotations.iscrowd == 0)].sort_values("ann_id")
    cx = (anns.x + anns.w / 2).to_numpy() * r
    np.testing.assert_allclose(sorted(targets[:, 1].tolist()), sorted(cx), rtol=1e-5)
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0}


def test_augmented_samples_are_reproducible_and_vary(synthetic):
    ds_dir, images_dir = synthetic
    ds = DetectionDataset.load(ds_dir).split("train")
    data = YoloxTrainDataset(ds, images_dir, 96, AugmentConfig(), epochs=3, no_aug_epochs=1)
    a, b, c = data[(0, 0)], data[(0, 0)], data[(0, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    batch = collate([a, c])
    assert batch[0].shape == (2, 3, 96, 96) and batch[1].shape[0] == 2 and batch[1].shape[2] == 5


def test_sampler_splits_epochs_across_ranks():
    parts = [list(EpochSampler(10, batch_size=2, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4  # 10 // (2 * 2) global batches
    idx = [i for p in parts for i, _ in p]
    assert len(set(idx)) == 8
    s = EpochSampler(10, 2, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert [e for _, e in s] == [1] * 10 and [i for i, _ in s] != [i for i, _ in first]
