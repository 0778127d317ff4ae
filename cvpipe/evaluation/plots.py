"""Evaluation plots (matplotlib, Agg): PR curves, per-class AP, confusion matrix, error drawings."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cvpipe.evaluation.coco import CocoEvaluation  # noqa: E402
from cvpipe.evaluation.confusion import ConfusionResult, ImageErrors  # noqa: E402

# BGR colours of the worst-images gallery
GREEN, RED, BLUE = (0, 170, 0), (0, 0, 230), (230, 80, 0)


def _save(fig, path: str | Path, tight: bool = True) -> Path:
    p = Path(path)
    fig.savefig(p, dpi=100, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return p


def plot_pr_overall(ev: CocoEvaluation, path: str | Path) -> Path:
    """Mean precision over classes vs recall at IoU .5 and .75 (the areas are AP50 and AP75)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for iou, key in ((0.5, "AP50"), (0.75, "AP75")):
        r, p = ev.pr_curve(iou)
        ax.plot(r, p, label=f"IoU {iou:g} (AP {ev.stats[key]:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall, all classes")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_pr_per_class(ev: CocoEvaluation, path: str | Path, max_classes: int = 80) -> Path:
    """Small multiples: one PR panel per class with ground truth (IoU .5 and .75), best AP first."""
    have = [(name, cid) for name, cid in zip(ev.cat_names, ev.cat_ids) if ev.per_class_ap.get(name, -1) >= 0]
    have.sort(key=lambda nc: -ev.per_class_ap[nc[0]])
    have = have[:max_classes]
    n = max(len(have), 1)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    width, height = 2.1 * cols, 1.9 * rows
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, sharex=True, sharey=True)
    # Fixed margins in inches: tight_layout and a tight bounding box each lay out every panel's ticks again, which
    # took most of model_eval's time (80 panels: seconds per call).
    fig.subplots_adjust(left=0.4 / width, right=1 - 0.15 / width, bottom=0.3 / height, top=1 - 0.55 / height,
                        wspace=0.15, hspace=0.4)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (name, cid) in zip(axes.flat, have):
        ax.set_visible(True)
        for iou, color in ((0.5, "tab:blue"), (0.75, "tab:orange")):
            r, p = ev.pr_curve(iou, cid)
            ax.plot(r, p, color=color, lw=1)
        # y given: the title is not re-placed around each panel's tick labels at draw time (slow over 80 panels)
        ax.set_title(f"{name} {ev.per_class_ap[name]:.2f}", fontsize=8, y=1.0)
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
        ax.tick_params(labelsize=6)
    fig.suptitle("precision-recall per class (blue IoU .5, orange IoU .75; title: AP@[.5:.95])", fontsize=10,
                 y=1 - 0.1 / height, va="top")
    return _save(fig, path, tight=False)


def plot_per_class_ap(per_class_ap: dict[str, float], path: str | Path) -> Path:
    items = sorted(((n, a) for n, a in per_class_ap.items() if a >= 0), key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.18 * len(items) + 1)))
    if items:
        names, aps = zip(*items)
        ax.barh(range(len(items)), aps, color="tab:blue")
        ax.set_yticks(range(len(items)), names, fontsize=7)
    ax.set(xlabel="AP@[.5:.95]", xlim=(0, 1), title="AP per class (classes with ground truth)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: ConfusionResult, path: str | Path) -> Path:
    """Row-normalised matrix over the classes that occur (as GT or prediction) plus background."""
    m = cm.matrix
    k = len(cm.names) - 1
    used = [i for i in range(k) if m[i].sum() or m[:, i].sum()] + [k]
    sub = m[np.ix_(used, used)].astype(float)
    rows = sub.sum(1, keepdims=True)
    norm = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    names = [cm.names[i] for i in used]
    size = max(4.0, 0.28 * len(used) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fs = 7 if len(used) <= 30 else 5
    ax.set_xticks(range(len(used)), names, rotation=90, fontsize=fs)
    ax.set_yticks(range(len(used)), names, fontsize=fs)
    if len(used) <= 25:
        for i in range(len(used)):
            for j in range(len(used)):
                if sub[i, j]:
                    ax.text(j, i, str(int(sub[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="ground truth",
           title=f"confusion (IoU {cm.iou_thr:g}, score {cm.score_thr:g}; rows normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def draw_errors(image_bgr: np.ndarray, res: ImageErrors, class_names: list[str]) -> np.ndarray:
    """Copy of the image with matched GT in green, false negatives in blue, false positives (with scores) in red."""
    from cvpipe.inference.visualize import draw_detections

    fn = set(res.fn)
    matched = [j for j in range(len(res.gt_boxes)) if j not in fn]
    img = draw_detections(image_bgr, res.gt_boxes[matched], [class_names[res.gt_labels[j]] for j in matched],
                          color=GREEN)
    img = draw_detections(img, res.gt_boxes[res.fn], [f"{class_names[res.gt_labels[j]]} FN" for j in res.fn],
                          color=BLUE)
    return draw_detections(img, res.det_boxes[res.fp], [class_names[res.det_labels[i]] for i in res.fp],
                           scores=res.det_scores[res.fp], color=RED)
