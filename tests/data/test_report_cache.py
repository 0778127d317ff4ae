"""data_prep's report plots are reused by what they show: the same numbers (and the same drawing code) give the
very same PNG without drawing it; a change to what one plot shows redraws that plot and no other."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.data import report as report_module
from cvpipe.data.schema import DetectionDataset


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def drawn(monkeypatch) -> list[str]:
    """The file names of the plots matplotlib drew, in order."""
    names: list[str] = []
    real = report_module._save

    def counting(fig, path):
        names.append(path.name)
        return real(fig, path)

    monkeypatch.setattr(report_module, "_save", counting)
    return names


def _dataset(first_box_w: float = 40.0, unsampled_box_w: float = 30.0) -> DetectionDataset:
    images = [{"image_id": i, "file_name": f"{i}.jpg", "width": 200, "height": 100, "digest": f"{i:064x}",
               "blob": f"{i:064x}.jpg", "split": "train" if i < 4 else "val"} for i in range(1, 6)]
    anns = [{"ann_id": 1, "image_id": 1, "category_id": 1, "x": 10.0, "y": 10.0, "w": first_box_w, "h": 20.0,
             "area": first_box_w * 20},
            {"ann_id": 2, "image_id": 5, "category_id": 2, "x": 5.0, "y": 5.0, "w": unsampled_box_w, "h": 30.0,
             "area": unsampled_box_w * 30}]
    cats = [{"category_id": 1, "name": "cat", "label": 0}, {"category_id": 2, "name": "dog", "label": 1}]
    return DetectionDataset.build(images, anns, cats)


THUMBS = {1: np.full((50, 100, 3), 128, np.uint8), 2: np.zeros((50, 100, 3), np.uint8)}  # images 1, 2 sampled
PLOTS = ["images_per_split.png", "class_histogram.png", "box_statistics.png", "samples.png"]


def test_the_same_report_draws_nothing_again(tmp_path, drawn):
    report_module.write_report(_dataset(), [], THUMBS, tmp_path / "a", {})
    assert drawn == PLOTS
    drawn.clear()
    report_module.write_report(_dataset(), [], THUMBS, tmp_path / "b", {})
    assert drawn == []
    for png in PLOTS:
        assert (tmp_path / "b" / png).read_bytes() == (tmp_path / "a" / png).read_bytes()
    assert (tmp_path / "b" / "report.html").read_text() == (tmp_path / "a" / "report.html").read_text()


def test_a_change_redraws_only_the_plots_that_show_it(tmp_path, drawn):
    report_module.write_report(_dataset(), [], THUMBS, tmp_path / "a", {})
    drawn.clear()
    report_module.write_report(_dataset(first_box_w=41.0), [], THUMBS, tmp_path / "b", {})
    assert drawn == ["samples.png"]  # a sampled image's box moved within its histogram bin
    drawn.clear()
    report_module.write_report(_dataset(unsampled_box_w=150.0), [], THUMBS, tmp_path / "c", {})
    assert drawn == ["box_statistics.png"]  # an image outside the samples, its box in another size bin
    assert (tmp_path / "c" / "box_statistics.png").read_bytes() != (tmp_path / "a" / "box_statistics.png").read_bytes()
