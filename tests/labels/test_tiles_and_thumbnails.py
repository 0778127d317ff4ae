"""Tiled prediction puts crop boxes back in image pixels and drops the ones a crop edge cuts; the mirrored view
puts its boxes back and rewards agreement; thumbnails draw both boxes (the label red, the proposal green)."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.labels.report import LABEL_BGR, PROPOSAL_BGR, thumbnail
from cvpipe.labels.tiles import crop_windows, flipped, tiled
from cvpipe.vision import Detections


def test_crop_windows_cover_the_image_and_overlap():
    wins = crop_windows(480, 640)
    assert len(wins) == 4
    covered = np.zeros((480, 640), bool)
    for x0, y0, x1, y1 in wins:
        covered[y0:y1, x0:x1] = True
    assert covered.all() and wins[0][2] > wins[1][0]  # the left and right crops overlap


def test_tiled_maps_crop_boxes_back_and_drops_cut_ones():
    def fake(images):
        out = []
        for im in images:
            h, w = im.shape[:2]
            if (h, w) == (480, 640):  # the whole image: nothing
                out.append(Detections.empty((h, w)))
            else:  # every crop: one box well inside, one touching the crop's right edge
                boxes = np.array([[10, 10, 50, 50], [w - 30, 100, w, 140]], np.float32)
                out.append(Detections(boxes, np.array([0.9, 0.8], np.float32), np.array([1, 2]), (h, w)))
        return out

    det = tiled(fake)([np.zeros((480, 640, 3), np.uint8)])[0]
    wins = crop_windows(480, 640)
    inside = {(x0 + 10.0, y0 + 10.0) for x0, y0, _, _ in wins}
    assert {(float(b[0]), float(b[1])) for b in det.boxes[det.labels == 1]} == inside
    edge = det.boxes[det.labels == 2]
    assert len(edge) == 2 and np.all(edge[:, 2] == 640)  # only where the crop edge is the image's own edge


def test_flipped_maps_mirrored_boxes_back_and_rewards_agreement():
    """An object at x 100-160 is seen in both views (the mirrored view at 480-540 of a 640 px image); a false
    positive only in the plain view; a third box only in the mirrored one."""
    def fake(images):
        out = []
        for im in images:
            mirrored = bool(im[0, -1, 0])  # the test image marks its left edge; mirrored, it is on the right
            boxes = [[480, 50, 540, 90], [300, 400, 330, 430]] if mirrored else [[100, 50, 160, 90], [10, 300, 40, 330]]
            scores = [0.7, 0.6] if mirrored else [0.9, 0.8]
            out.append(Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array([1, 2]),
                                  im.shape[:2]))
        return out

    image = np.zeros((480, 640, 3), np.uint8)
    image[:, 0] = 1
    det = flipped(fake)([image])[0]
    got = {tuple(float(v) for v in b): float(s) for b, s in zip(det.boxes, det.scores)}
    assert got[(100.0, 50.0, 160.0, 90.0)] == pytest.approx((0.9 + 0.7) / 2)  # both views: the mean
    assert got[(10.0, 300.0, 40.0, 330.0)] == pytest.approx(0.8 / 2)  # the plain view only
    assert got[(310.0, 400.0, 340.0, 430.0)] == pytest.approx(0.6 / 2)  # the mirrored view only, mapped back
    assert len(got) == 3


def test_thumbnail_draws_label_red_and_proposal_green():
    pixels = np.full((200, 300, 3), 128, np.uint8)
    thumb = thumbnail(pixels, [20, 20, 80, 80], [150, 100, 220, 160], size=220)
    colours = {tuple(int(v) for v in px) for px in thumb.reshape(-1, 3)}
    assert LABEL_BGR in colours and PROPOSAL_BGR in colours
    label_free = thumbnail(pixels, None, [150, 100, 220, 160]).reshape(-1, 3)
    assert LABEL_BGR not in {tuple(int(v) for v in px) for px in label_free}
