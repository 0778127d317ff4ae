"""Geometry of the augmentations: a drawn rectangle and its box must still coincide after each transform."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.training import augment as A

SIZE = 160


def rect_image(h=120, w=160, box=(30, 20, 90, 70)):
    img = np.full((h, w, 3), 114, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (255, 255, 255)
    return img, np.array([box], np.float32), np.array([3], np.int64)


def white_extent(img):
    """xyxy of the pixels that are (nearly) white, or None."""
    ys, xs = np.nonzero((img > 200).all(-1))
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_hflip_moves_box_with_pixels():
    img, boxes, _ = rect_image()
    out, ob = A.hflip(img, boxes)
    np.testing.assert_allclose(ob[0], white_extent(out))
    np.testing.assert_allclose(ob[0], [160 - 90, 20, 160 - 30, 70])


@pytest.mark.parametrize("seed", range(5))
def test_random_affine_box_covers_rectangle(seed):
    img, boxes, labels = rect_image(box=(50, 40, 110, 80))
    rng = np.random.default_rng(seed)
    out, ob, ol = A.random_affine(img, boxes, labels, rng, SIZE, degrees=0, translate=0.1, scale=(0.7, 1.3), shear=0)
    ext = white_extent(out)
    assert len(ob) == 1 and ol.tolist() == [3]
    # without rotation/shear the box is exact (to interpolation: 1.5 px)
    np.testing.assert_allclose(ob[0], ext, atol=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_random_affine_with_rotation_box_contains_rectangle(seed):
    img, boxes, labels = rect_image(box=(50, 40, 110, 80))
    out, ob, _ = A.random_affine(img, boxes, labels, np.random.default_rng(seed), SIZE, degrees=20, translate=0.05,
                                 scale=(0.9, 1.1), shear=3)
    ext = white_extent(out)
    assert len(ob) == 1
    # the hull of the moved corners contains every moved pixel
    assert ob[0][0] <= ext[0] + 1 and ob[0][1] <= ext[1] + 1 and ob[0][2] >= ext[2] - 1 and ob[0][3] >= ext[3] - 1


def test_affine_drops_boxes_pushed_outside():
    img, boxes, labels = rect_image(box=(0, 0, 10, 10))
    # scale 0.1 shrinks the 10 px box to 1 px: below min_size, dropped
    _, ob, ol = A.random_affine(img, boxes, labels, np.random.default_rng(0), SIZE, 0, 0, (0.1, 0.1), 0)
    assert len(ob) == 0 and len(ol) == 0


def test_mosaic_places_each_image_and_its_box():
    imgs, bxs, lbs = [], [], []
    for k in range(4):
        img, b, _ = rect_image(h=100, w=100, box=(20, 30, 60, 70))
        imgs.append(img)
        bxs.append(b)
        lbs.append(np.array([k], np.int64))
    canvas, boxes, labels = A.mosaic(imgs, bxs, lbs, np.random.default_rng(1), SIZE)
    assert canvas.shape == (2 * SIZE, 2 * SIZE, 3)
    assert sorted(labels.tolist()) == [0, 1, 2, 3]
    for box in boxes:
        x1, y1, x2, y2 = box.astype(int)
        assert (canvas[y1:y2, x1:x2] > 200).all(), "box must cover the white rectangle"
        # and it is tight: one pixel outside on each side is background
        assert (canvas[y1:y2, x1 - 1] < 200).all() and (canvas[y1 - 1, x1:x2] < 200).all()


def test_mosaic_then_affine_keeps_boxes_on_rectangles():
    imgs, bxs, lbs = zip(*[rect_image(h=100, w=100, box=(20, 30, 60, 70)) for _ in range(4)])
    rng = np.random.default_rng(3)
    canvas, boxes, labels = A.mosaic(list(imgs), list(bxs), list(lbs), rng, SIZE)
    out, ob, _ = A.random_affine(canvas, boxes, labels, rng, SIZE, 0, 0.0, (1.0, 1.0), 0)
    assert out.shape == (SIZE, SIZE, 3)
    for box in ob:
        x1, y1, x2, y2 = np.round(box).astype(int)
        inner = out[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
        assert inner.size and (inner > 200).all()


def test_mixup_blends_and_unions_boxes():
    img, boxes, labels = rect_image(h=SIZE, w=SIZE)
    other, ob, _ = rect_image(h=SIZE, w=SIZE, box=(100, 100, 150, 150))
    out, b, mixed_labels = A.mixup(img, boxes, labels, other, ob, np.array([7]), np.random.default_rng(0), (1.0, 1.0))
    assert out.shape == img.shape
    assert 0 in range(len(b)) and mixed_labels[0] == 3
    # where only `img` is white, the blend is halfway between white and the other's grey
    y, x = 45, 60
    assert abs(int(out[y, x, 0]) - (255 + 114) // 2) <= 1
    if len(b) == 2:  # the other's box survived the crop: it sits on half-white pixels
        x1, y1, x2, y2 = np.round(b[1]).astype(int)
        assert (out[y1 + 1:y2 - 1, x1 + 1:x2 - 1] >= 180).all()


def test_hsv_jitter_keeps_shape_and_changes_colour():
    img, _, _ = rect_image()
    img[:, :, 2] = 100
    out = A.hsv_jitter(img, np.random.default_rng(0), 20, 60, 60)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)


def test_targets_layout_and_filter():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 0.5, 10], [150, 150, 200, 170]], np.float32)
    b, kept_labels = A.filter_small(boxes, np.array([1, 2, 3]), 160, 160, 1.0)
    assert kept_labels.tolist() == [1, 3]
    np.testing.assert_allclose(b[1], [150, 150, 160, 160])
    t = A.xyxy_to_targets(b, kept_labels)
    np.testing.assert_allclose(t[0], [1, 20, 40, 20, 40])
