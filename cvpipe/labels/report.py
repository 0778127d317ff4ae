"""The label check's HTML page: the self-test (how far to trust each queue), per-class noise rates, and each
queue's first entries as thumbnails with both boxes drawn (the label red, the model's proposal green)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cvpipe.data.schema import DetectionDataset
from cvpipe.reporting.html import Report, escape, image, table
from cvpipe.vision import read_image

from .score import ERROR_TYPES
from .selftest import SelfTest, summarize

LABEL_BGR, PROPOSAL_BGR = (40, 40, 220), (40, 180, 40)
WHAT = {"missing": "an object the model sees that no label covers (proposal: the model's box)",
        "spurious": "a label with nothing the model sees under it (fix: delete it)",
        "wrong_class": "a label the model sees as another class (proposal: that class)",
        "bad_location": "a label the model sees moved or resized (proposal: the model's box)",
        "duplicate": "two labels of one object (fix: delete the red one; green is the one kept)"}


def thumbnail(pixels: np.ndarray, label_box, proposal_box, size: int = 220) -> np.ndarray:
    """A crop around both boxes (with context), the label in red and the proposal in green."""
    boxes = [np.asarray(b, float) for b in (label_box, proposal_box) if b is not None and np.isfinite(b).all()]
    h, w = pixels.shape[:2]
    lo, hi = np.min([b[:2] for b in boxes], 0), np.max([b[2:] for b in boxes], 0)
    pad = np.maximum((hi - lo) * 0.6, 24)
    x0, y0 = (np.maximum(lo - pad, 0)).astype(int)
    x1, y1 = np.minimum(hi + pad, [w, h]).astype(int)
    crop = pixels[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].copy()
    scale = size / max(crop.shape[:2])
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))))
    for box, color in ((label_box, LABEL_BGR), (proposal_box, PROPOSAL_BGR)):
        if box is not None and np.isfinite(box).all():
            b = ((np.asarray(box, float) - [x0, y0, x0, y0]) * scale).round().astype(int)
            cv2.rectangle(crop, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), color, 2)
    return crop


def _boxes(entry: dict) -> tuple[list | None, list | None]:
    label = [entry[k] for k in ("x1", "y1", "x2", "y2")]
    proposal = [entry[k] for k in ("px1", "py1", "px2", "py2")]
    return (label if np.isfinite(label).all() else None), (proposal if np.isfinite(proposal).all() else None)


def entry_rows(queue: pd.DataFrame, names: list[str], top: int) -> list[dict]:
    def name(i) -> str:
        return names[int(i)] if 0 <= int(i) < len(names) else ""

    return [{"rank": int(e["rank"]), "image": int(e["image_id"]), "label": name(e["label"]),
             "ann": int(e["ann_id"]) if e["ann_id"] >= 0 else "", "proposal": name(e["proposal_label"]),
             "score": round(float(e["score"]), 3), "p_error": round(float(e["p_error"]), 2),
             "AP gain": "" if np.isnan(e["ap_gain"]) else round(float(e["ap_gain"]), 4)}
            for e in queue.head(top).to_dict("records")]


def _thumbs(ds: DetectionDataset, images_dir: Path, queue: pd.DataFrame, out: Path, top: int) -> str:
    blobs = dict(zip(ds.images["image_id"], ds.images["blob"]))
    cells = []
    for e in queue.head(top).to_dict("records"):
        pixels = read_image(Path(images_dir) / blobs[int(e["image_id"])])
        path = out / f"{e['type']}_{int(e['rank'])}.jpg"
        cv2.imwrite(str(path), thumbnail(pixels, *_boxes(e)), [cv2.IMWRITE_JPEG_QUALITY, 80])
        cells.append(f'<figure style="display:inline-block;margin:4px">{image(path)}<figcaption>'
                     f'#{int(e["rank"])} image {int(e["image_id"])}</figcaption></figure>')
    return "".join(cells)


def noise_rate_plot(rates: pd.DataFrame, path: Path, top: int = 25) -> Path:
    """Stacked bars of the expected error share per class and type (the classes with the highest rates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = rates.head(top)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.25 * len(head) + 1)))
    y, left = np.arange(len(head)), np.zeros(len(head))
    for kind in ERROR_TYPES:
        share = (head[kind] / head["labels"].clip(lower=1)).to_numpy()
        ax.barh(y, share, left=left, label=kind)
        left += share
    ax.set_yticks(y, list(head["class"]), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("estimated errors per label")
    ax.set_title("estimated noise rate per class")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(ds: DetectionDataset, images_dir: Path, queues: dict[str, pd.DataFrame], test: SelfTest,
                 rates: pd.DataFrame, summary: dict, out: Path, top: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    names = ds.class_names
    st = summarize(test.table).round(3)
    rep = Report("Label check: ranked error queues")
    rep.add("How far to trust the queues (self-test)",
            f"<p>Errors injected into a copy of these labels ({summary['selftest_seeds']} independent seeds, "
            "5 % of the boxes per type), scored like the real labels. Recall: share of the injected errors in the "
            "first k = 2 x injected entries of their queue; precision: share of the first 100 entries that are "
            "injected errors (true errors already in the data count against it). merged: every queue as one list, "
            "ranked by each entry's chance of being an error (hit rates of the other seeds).</p>", table(st))
    per_seed = {r["type"]: r for r in st.to_dict("records")}
    for kind in ERROR_TYPES:
        s = per_seed.get(kind, {})
        rep.add(f"{kind} ({len(queues[kind])} entries)",
                f"<p>{escape(WHAT[kind])}. Self-test: recall {s.get('recall', float('nan')):.2f} "
                f"(worst seed {s.get('recall_min', float('nan')):.2f}), precision@100 "
                f"{s.get('precision', float('nan')):.2f}.</p>",
                table(entry_rows(queues[kind], names, top)), _thumbs(ds, images_dir, queues[kind], thumbs, top))
    rep.add("Estimated noise rate per class",
            "<p>Expected errors over the class's labels: the entries the self-test calls more likely errors than "
            "not (hit rate >= 0.5 at their score), each counted with that rate. An estimate: the self-test's rates "
            "are measured with injected errors on top of the real ones.</p>",
            image(noise_rate_plot(rates, out / "noise_rates.png")), table(rates.head(30).round(3)))
    return rep.write(out / "report.html")
