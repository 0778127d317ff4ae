"""data_prep's visual report: class histograms per split, box statistics, sample images with their
boxes, the split table and every validation finding. One self-contained HTML file plus the PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cvpipe.data.schema import SPLITS, DetectionDataset  # noqa: E402
from cvpipe.data.split import split_table  # noqa: E402
from cvpipe.data.validate import summarize_findings  # noqa: E402
from cvpipe.reporting.html import Report, escape, image, table  # noqa: E402

COLORS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def class_histogram(ds: DetectionDataset, path: Path) -> Path:
    names = dict(zip(ds.categories["category_id"], ds.categories["name"]))
    cats = list(ds.categories.sort_values("category_id")["category_id"])
    fig, ax = plt.subplots(figsize=(9, max(3, 0.22 * len(cats) + 1)))
    y = np.arange(len(cats))
    left = np.zeros(len(cats))
    for s in SPLITS:
        a = ds.split(s).annotations
        counts = a[a["iscrowd"] == 0]["category_id"].value_counts()
        vals = np.array([counts.get(c, 0) for c in cats])
        ax.barh(y, vals, left=left, color=COLORS[s], label=s)
        left += vals
    ax.set_yticks(y, [names[c] for c in cats], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("boxes (crowd regions excluded)")
    ax.set_title("boxes per class and split")
    ax.legend()
    return _save(fig, path)


def box_statistics(ds: DetectionDataset, path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for s in SPLITS:
        a = ds.split(s).annotations
        a = a[(a["iscrowd"] == 0) & (a["w"] > 0) & (a["h"] > 0)]
        if a.empty:
            continue
        a1.hist(np.sqrt(a["w"] * a["h"]), bins=np.geomspace(1, 2048, 40), histtype="step", color=COLORS[s], label=s)
        a2.hist(a["w"] / a["h"], bins=np.geomspace(0.05, 20, 40), histtype="step", color=COLORS[s], label=s)
    for ax, title in ((a1, "box size sqrt(w*h), px"), (a2, "aspect ratio w/h")):
        ax.set_xscale("log")
        ax.set_title(title)
        ax.legend()
    for edge in (32, 96):  # COCO small / medium / large
        a1.axvline(edge, color="grey", ls=":", lw=1)
    return _save(fig, path)


def images_per_split(ds: DetectionDataset, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4, 3))
    counts = [len(ds.split(s).images) for s in SPLITS]
    ax.bar(SPLITS, counts, color=[COLORS[s] for s in SPLITS])
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom")
    ax.set_title("images per split")
    return _save(fig, path)


def sample_grid(ds: DetectionDataset, thumbnails: dict[int, np.ndarray], path: Path, limit: int = 12) -> Path | None:
    ids = [i for i in ds.images["image_id"] if int(i) in thumbnails][:limit]
    if not ids:
        return None
    names = dict(zip(ds.categories["category_id"], ds.categories["name"]))
    info = ds.images.set_index("image_id")
    cols = 4
    rows = (len(ids) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image_id in zip(np.atleast_1d(axes).ravel(), ids):
        thumb = thumbnails[int(image_id)]
        scale = thumb.shape[1] / max(1, info.loc[image_id, "width"])
        ax.imshow(thumb)
        ax.set_title(f"{info.loc[image_id, 'split']}: {Path(info.loc[image_id, 'file_name']).name}", fontsize=8)
        for a in ds.annotations[ds.annotations["image_id"] == image_id].itertuples():
            color = "yellow" if a.iscrowd else "lime"
            ax.add_patch(plt.Rectangle((a.x * scale, a.y * scale), a.w * scale, a.h * scale, fill=False,
                                       edgecolor=color, lw=1))
            ax.text(a.x * scale, a.y * scale, names.get(a.category_id, a.category_id), fontsize=6, color="black",
                    bbox={"facecolor": color, "alpha": 0.7, "pad": 0.5, "lw": 0})
    return _save(fig, path)


def write_report(ds: DetectionDataset, findings: list[dict], thumbnails: dict[int, np.ndarray], out: Path,
                 params: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pngs = {
        "images": images_per_split(ds, out / "images_per_split.png"),
        "classes": class_histogram(ds, out / "class_histogram.png"),
        "boxes": box_statistics(ds, out / "box_statistics.png"),
    }
    samples = sample_grid(ds, thumbnails, out / "samples.png")
    # boxes per class and split, crowd regions excluded (one split() per split: each builds a dataset)
    counts = {s: ds.split(s).annotations.query("iscrowd == 0")["category_id"].value_counts() for s in SPLITS}
    per_class = []
    for c in ds.categories.sort_values("label").itertuples():
        row = {"label": c.label, "category_id": c.category_id, "name": c.name}
        row.update({s: int(counts[s].get(c.category_id, 0)) for s in SPLITS})
        per_class.append(row)
    rep = Report("data_prep report")
    rep.add("Splits", table(split_table(ds)), image(pngs["images"]))
    rep.add("Validation findings", table(summarize_findings(findings)) if findings else
            '<p class="good">no problems found</p>',
            '<p class="note">Every change is listed below (first 500 rows; all of them in findings.json).</p>',
            table(findings[:500], columns=["step", "rule", "action", "image_id", "ann_id", "detail"]))
    rep.add("Classes", table(per_class), image(pngs["classes"]))
    rep.add("Boxes", image(pngs["boxes"]))
    if samples:
        rep.add("Sample images", '<p class="note">green: boxes, yellow: crowd regions</p>', image(samples))
    rep.add("Parameters", f"<pre>{escape(params)}</pre>")
    return rep.write(out / "report.html")
