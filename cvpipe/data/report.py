"""data_prep's visual report: class histograms per split, box statistics, sample images with their
boxes, the split table and every validation finding. One self-contained HTML file plus the PNGs."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.data.schema import SPLITS, DetectionDataset
from cvpipe.data.split import split_table
from cvpipe.data.validate import summarize_findings
from cvpipe.reporting.html import Report, escape, image, table
from cvpipe.reporting.plot_cache import code_version, plot_key, reuse_or_draw

COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


@cache
def _plt() -> Any:
    """matplotlib's pyplot, imported when a plot is drawn: a report whose plots all come from the plot cache
    does not pay for importing it (most of a small data_prep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@cache
def _drawing_code() -> str:
    """What keys a cached plot besides what it shows: this module's code and matplotlib's version."""
    return code_version(__file__)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def class_histogram(per_class: list[dict], path: Path) -> Path:
    """Boxes per class, stacked by split (rows of `_per_class_counts`, drawn in category-id order)."""
    rows = sorted(per_class, key=lambda r: r["category_id"])
    fig, ax = _plt().subplots(figsize=(9, max(3, 0.22 * len(rows) + 1)))
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for s in SPLITS:
        vals = np.array([r[s] for r in rows])
        ax.barh(y, vals, left=left, color=COLORS[s], label=s)
        left += vals
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("boxes (crowd regions excluded)")
    ax.set_title("boxes per class and split")
    ax.legend()
    return _save(fig, path)


SIZE_BINS = np.geomspace(1, 2048, 40)
ASPECT_BINS = np.geomspace(0.05, 20, 40)


def box_histograms(ds: DetectionDataset) -> dict[str, dict[str, list[int]]]:
    """Per split, the counts of box size sqrt(w*h) and aspect w/h in the plot's bins (what box_statistics
    draws, and what keys its cached PNG)."""
    split_of = ds.images.set_index("image_id")["split"]
    a = ds.annotations[(ds.annotations["iscrowd"] == 0) & (ds.annotations["w"] > 0) & (ds.annotations["h"] > 0)]
    splits = a["image_id"].map(split_of)
    out = {}
    for s in SPLITS:
        b = a[splits == s]
        if len(b):
            out[s] = {"size": np.histogram(np.sqrt(b["w"] * b["h"]), SIZE_BINS)[0].tolist(),
                      "aspect": np.histogram(b["w"] / b["h"], ASPECT_BINS)[0].tolist()}
    return out


def box_statistics(hists: dict[str, dict[str, list[int]]], path: Path) -> Path:
    fig, (a1, a2) = _plt().subplots(1, 2, figsize=(10, 3.5))
    for s, h in hists.items():
        a1.stairs(h["size"], SIZE_BINS, color=COLORS[s], label=s)
        a2.stairs(h["aspect"], ASPECT_BINS, color=COLORS[s], label=s)
    for ax, title in ((a1, "box size sqrt(w*h), px"), (a2, "aspect ratio w/h")):
        ax.set_xscale("log")
        ax.set_title(title)
        if hists:
            ax.legend()
    for edge in (32, 96):  # COCO small / medium / large
        a1.axvline(edge, color="grey", ls=":", lw=1)
    return _save(fig, path)


def images_per_split(counts: list[int], path: Path) -> Path:
    fig, ax = _plt().subplots(figsize=(4, 3))
    ax.bar(SPLITS, counts, color=[COLORS[s] for s in SPLITS])
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom")
    ax.set_title("images per split")
    return _save(fig, path)


@dataclass
class Samples:
    """The sample grid's images (at most `limit` of those with a thumbnail) and what it draws of each."""

    ids: list[int]
    shown: list[dict]  # per image: content digest, title, width, boxes (what keys the cached PNG)

    @classmethod
    def of(cls, ds: DetectionDataset, thumbnails: dict[int, np.ndarray], limit: int = 12) -> Samples:
        ids = [i for i in ds.images["image_id"].tolist() if i in thumbnails][:limit]
        names = dict(zip(ds.categories["category_id"].tolist(), ds.categories["name"].tolist()))
        images = ds.images[ds.images["image_id"].isin(ids)].set_index("image_id")
        anns = ds.annotations[ds.annotations["image_id"].isin(ids)]
        boxes: dict[int, list[list]] = {i: [] for i in ids}
        for image_id, x, y, w, h, category_id, crowd in zip(
                *(anns[c].tolist() for c in ("image_id", "x", "y", "w", "h", "category_id", "iscrowd"))):
            boxes[image_id].append([x, y, w, h, str(names.get(category_id, category_id)), bool(crowd)])
        shown = [{"digest": str(images.at[i, "digest"]),
                  "title": f"{images.at[i, 'split']}: {Path(images.at[i, 'file_name']).name}",
                  "width": int(images.at[i, "width"]), "boxes": boxes[i]} for i in ids]
        return cls(ids, shown)


def sample_grid(samples: Samples, thumbnails: dict[int, np.ndarray], path: Path) -> Path:
    cols = 4
    rows = (len(samples.ids) + cols - 1) // cols
    fig, axes = _plt().subplots(rows, cols, figsize=(4 * cols, 3.2 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image_id, shown in zip(np.atleast_1d(axes).ravel(), samples.ids, samples.shown):
        thumb = thumbnails[image_id]
        scale = thumb.shape[1] / max(1, shown["width"])
        ax.imshow(thumb)
        ax.set_title(shown["title"], fontsize=8)
        for x, y, w, h, name, crowd in shown["boxes"]:
            color = "yellow" if crowd else "lime"
            ax.add_patch(_plt().Rectangle((x * scale, y * scale), w * scale, h * scale, fill=False, edgecolor=color,
                                          lw=1))
            ax.text(x * scale, y * scale, name, fontsize=6, color="black",
                    bbox={"facecolor": color, "alpha": 0.7, "pad": 0.5, "lw": 0})
    return _save(fig, path)


def report_candidates(images: Any, count: int, seed: int) -> set[int]:
    """The images the report may draw (those that decode, up to its limit): the first `count` ids in a seeded
    order of their paths, so that a version which only changed some images' bytes draws the same ones."""
    from cvpipe.data.diff import image_keys
    from cvpipe.data.split import seeded_order

    if count <= 0 or images.empty:
        return set()
    order = zip(seeded_order(image_keys(images).tolist(), seed), images["image_id"].astype(int).tolist())
    return {image_id for _, image_id in heapq.nsmallest(count, order)}


def _per_class_counts(ds: DetectionDataset) -> list[dict]:
    """Boxes (crowd regions excluded) per class and split: one count over the annotations, not one scan of the
    data per class and split (80 classes x 3 splits over 100,000 images took tens of seconds)."""
    split_of = ds.images.set_index("image_id")["split"]
    a = ds.annotations[ds.annotations["iscrowd"] == 0]
    counts = a.groupby([a["category_id"], a["image_id"].map(split_of)]).size()
    per_class = []
    for c in ds.categories.sort_values("label").itertuples():
        row = {"label": c.label, "category_id": c.category_id, "name": c.name}
        for s in SPLITS:
            row[s] = int(counts.get((c.category_id, s), 0))
        per_class.append(row)
    return per_class


def write_report(ds: DetectionDataset, findings: list[dict], thumbnails: dict[int, np.ndarray], out: Path,
                 params: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    per_class = _per_class_counts(ds)
    counts = [int((ds.images["split"] == s).sum()) for s in SPLITS]
    hists = box_histograms(ds)
    samples = Samples.of(ds, thumbnails)
    code = _drawing_code()
    pngs = {
        "images": reuse_or_draw(out / "images_per_split.png", plot_key(code, "images_per_split", counts),
                                lambda p: images_per_split(counts, p)),
        "classes": reuse_or_draw(out / "class_histogram.png", plot_key(code, "class_histogram", per_class),
                                 lambda p: class_histogram(per_class, p)),
        "boxes": reuse_or_draw(out / "box_statistics.png", plot_key(code, "box_statistics", hists),
                               lambda p: box_statistics(hists, p)),
    }
    grid = reuse_or_draw(out / "samples.png", plot_key(code, "sample_grid", samples.shown),
                         lambda p: sample_grid(samples, thumbnails, p)) if samples.ids else None
    rep = Report("data_prep report")
    rep.add("Splits", table(split_table(ds)), image(pngs["images"]))
    rep.add("Validation findings", table(summarize_findings(findings)) if findings else
            '<p class="good">no problems found</p>',
            '<p class="note">Every change is listed below (first 500 rows; all of them in findings.json).</p>',
            table(findings[:500], columns=["step", "rule", "action", "image_id", "ann_id", "detail"]))
    rep.add("Classes", table(per_class), image(pngs["classes"]))
    rep.add("Boxes", image(pngs["boxes"]))
    if grid:
        rep.add("Sample images", '<p class="note">green: boxes, yellow: crowd regions</p>', image(grid))
    rep.add("Parameters", f"<pre>{escape(params)}</pre>")
    return rep.write(out / "report.html")
