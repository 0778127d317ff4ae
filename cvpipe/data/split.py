"""Train/val/test split stratified by class presence: rare classes are placed first so that each
class reaches every split where it has enough images. Deterministic for the same data and seed
(independent of row order: images are ordered by content digest)."""

from __future__ import annotations

import numpy as np

from cvpipe.data.schema import SPLITS, DetectionDataset


def stratified_split(ds: DetectionDataset, ratios: tuple[float, float, float], seed: int) -> dict[int, str]:
    """image_id -> split name."""
    r = np.asarray(ratios, dtype=float)
    if (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"split ratios must be non-negative with a positive sum, got {ratios}")
    r = r / r.sum()
    images = ds.images.sort_values(["digest", "image_id"]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    images = images.iloc[order].reset_index(drop=True)
    cats = sorted(set(ds.annotations["category_id"]))
    col = {c: i for i, c in enumerate(cats)}
    presence = np.zeros((len(images), len(cats)), dtype=bool)
    pos = {int(i): k for k, i in enumerate(images["image_id"])}
    for img, cat in zip(ds.annotations["image_id"], ds.annotations["category_id"]):
        if int(img) in pos:
            presence[pos[int(img)], col[cat]] = True
    per_class = presence.sum(0)
    want_class = per_class[None, :] * r[:, None]  # splits x classes
    want_total = len(images) * r
    have_class = np.zeros_like(want_class)
    have_total = np.zeros(len(r))
    # images whose rarest class is rarest go first; images without objects last
    rarity = np.where(presence, per_class[None, :], np.iinfo(np.int64).max).min(1) if len(cats) else \
        np.full(len(images), np.iinfo(np.int64).max)
    assignment: dict[int, str] = {}
    for k in np.argsort(rarity, kind="stable"):
        classes = presence[k]
        if classes.any():
            rarest = np.flatnonzero(classes)[np.argmin(per_class[classes])]
            need = want_class[:, rarest] - have_class[:, rarest]
        else:
            need = want_total - have_total
        total_need = want_total - have_total
        # most needed for the rarest class, then for the overall ratio; splits with ratio 0 never get images
        score = np.where(r > 0, need * 1e6 + total_need, -np.inf)
        s = int(np.argmax(score))
        have_class[s] += classes
        have_total[s] += 1
        assignment[int(images["image_id"].iloc[k])] = SPLITS[s]
    return assignment


def split_table(ds: DetectionDataset) -> list[dict]:
    rows = []
    for s in SPLITS:
        sub = ds.split(s)
        crowd = sub.annotations["iscrowd"] == 1
        rows.append({"split": s, "images": len(sub.images), "boxes": int((~crowd).sum()), "crowd": int(crowd.sum()),
                     "classes present": int(sub.annotations["category_id"].nunique()),
                     "negatives": int((~sub.images["image_id"].isin(sub.annotations["image_id"])).sum())})
    return rows
