"""Training curves: metrics.csv (one row per epoch, row 0 = the start before training) and curves.png (losses,
val AP, learning rate)."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["epoch", "total_loss", "iou_loss", "obj_loss", "cls_loss", "l1_loss", "num_fg", "lr", "AP", "AP50",
           "imgs_per_s", "seconds", "augment"]


def write_curves(history: list[dict], directory: Path, plot: bool = True) -> None:
    """metrics.csv always; curves.png when `plot` (the trainer redraws it only when val AP is new and at the end:
    a redraw costs more than a tiny epoch)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    if plot:
        plot_curves(history, directory / "curves.png")


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("total_loss", "iou_loss", "obj_loss", "cls_loss", "l1_loss"):
        values = [r.get(key) for r in history]
        axes[0].plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=key)
    axes[0].set_title("training loss (epoch 0: the start, no augmentation)")
    axes[0].legend()
    evaluated = [r for r in history if r.get("AP") is not None]
    for key in ("AP", "AP50"):
        axes[1].plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=key)
    axes[1].set_title("validation AP (epoch 0: the pretrained start)")
    axes[1].legend()
    axes[2].plot(epochs, [r["lr"] for r in history], marker="o")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    # fixed margins: tight_layout lays every tick label out twice, most of the cost of a plot redrawn each epoch
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.13, top=0.92, wspace=0.15)
    fig.savefig(path, dpi=100)
    plt.close(fig)
