"""The stratified split is stable across data versions: an image whose bytes change keeps its split and moves no
other image, and a removed image moves few others, so test images of the old version do not turn into training
images of the new one."""

from __future__ import annotations

import numpy as np

from cvpipe.data.schema import DetectionDataset
from cvpipe.data.split import stratified_split


def _dataset(n: int = 2000, seed: int = 0) -> DetectionDataset:
    rng = np.random.default_rng(seed)
    images = [{"image_id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100, "digest": f"{rng.bytes(32).hex()}",
               "source": f"images/{i}.jpg"}
              for i in range(n)]
    anns = [{"ann_id": k, "image_id": int(i), "category_id": int(c), "x": 1.0, "y": 1.0, "w": 5.0, "h": 5.0,
             "area": 25.0}
            for k, (i, c) in enumerate(zip(rng.integers(0, n, 3 * n), rng.zipf(1.5, 3 * n) % 20 + 1))]
    return DetectionDataset.build(images, anns, [{"category_id": c, "name": f"c{c}"} for c in range(1, 21)])


def _moved(a: dict[int, str], b: dict[int, str]) -> int:
    return sum(a[i] != b[i] for i in a)


def test_changed_bytes_move_nothing_and_a_removed_image_few_others():
    ds = _dataset()
    before = stratified_split(ds, (0.7, 0.15, 0.15), seed=0)
    images = ds.images.copy()
    images.loc[[0, 700, 1999], "digest"] = "f" * 64  # new contents under the same paths
    assert stratified_split(DetectionDataset.build(images, ds.annotations, ds.categories), (0.7, 0.15, 0.15),
                            0) == before
    moved = []
    for k in (0, 700, 1999):  # one image at a time removed
        keep = ds.images["image_id"] != k
        after = stratified_split(DetectionDataset.build(ds.images[keep], ds.annotations, ds.categories),
                                 (0.7, 0.15, 0.15), 0)
        moved.append(sum(before[i] != s for i, s in after.items()))
    assert max(moved) < 0.05 * len(before), moved  # a shuffle of the whole list moves about 40 %
    assert _moved(before, stratified_split(ds, (0.7, 0.15, 0.15), seed=1)) > 0.2 * len(before)  # the seed matters


def test_the_order_follows_the_image_path_not_the_row_order_or_id():
    ds = _dataset(300)
    before = stratified_split(ds, (0.7, 0.15, 0.15), seed=0)
    shuffled = ds.images.sample(frac=1.0, random_state=3)
    after = stratified_split(DetectionDataset.build(shuffled, ds.annotations, ds.categories), (0.7, 0.15, 0.15), 0)
    assert after == before


def test_an_image_id_given_twice_and_boxes_of_unknown_images_do_not_break_the_split():
    """Hostile markup: two image rows with one id (the last row's classes count, as before), and boxes naming
    an image that is not being split (counted for no split)."""
    ds = _dataset(200)
    images = ds.images.copy()
    images.loc[199, "image_id"] = 5
    anns = ds.annotations.copy()
    anns.loc[0, "image_id"] = 10**6
    out = stratified_split(DetectionDataset.build(images, anns, ds.categories), (0.7, 0.15, 0.15), seed=0)
    assert set(out) == set(images["image_id"]) and set(out.values()) <= {"train", "val", "test"}
