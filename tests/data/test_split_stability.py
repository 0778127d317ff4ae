"""The stratified split is stable across data versions: a new version in which one image changed (a new content
digest) keeps nearly every other image in its split, so test images of the old version do not turn into
training images of the new one."""

from __future__ import annotations

import numpy as np

from cvpipe.data.schema import DetectionDataset
from cvpipe.data.split import stratified_split


def _dataset(n: int = 2000, seed: int = 0) -> DetectionDataset:
    rng = np.random.default_rng(seed)
    images = [{"image_id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100, "digest": f"{rng.bytes(32).hex()}"}
              for i in range(n)]
    anns = [{"ann_id": k, "image_id": int(i), "category_id": int(c), "x": 1.0, "y": 1.0, "w": 5.0, "h": 5.0,
             "area": 25.0}
            for k, (i, c) in enumerate(zip(rng.integers(0, n, 3 * n), rng.zipf(1.5, 3 * n) % 20 + 1))]
    return DetectionDataset.build(images, anns, [{"category_id": c, "name": f"c{c}"} for c in range(1, 21)])


def _moved(a: dict[int, str], b: dict[int, str]) -> int:
    return sum(a[i] != b[i] for i in a)


def test_one_changed_image_keeps_the_others_in_their_splits():
    ds = _dataset()
    before = stratified_split(ds, (0.7, 0.15, 0.15), seed=0)
    moved = []
    for k in (0, 700, 1999):  # one image at a time gets new content
        images = ds.images.copy()
        images.loc[k, "digest"] = "f" * 64
        after = stratified_split(DetectionDataset.build(images, ds.annotations, ds.categories), (0.7, 0.15, 0.15), 0)
        moved.append(_moved(before, after))
    assert max(moved) < 0.05 * len(before), moved  # a shuffle of the whole list moves about 40 %
    assert _moved(before, stratified_split(ds, (0.7, 0.15, 0.15), seed=1)) > 0.2 * len(before)  # the seed matters
