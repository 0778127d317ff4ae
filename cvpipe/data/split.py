"""Train/val/test split stratified by class presence: rare classes are placed first so that each
class reaches every split where it has enough images (iterative stratification). Deterministic for the same data
and seed (independent of row order), and stable across data versions: images are taken in the order of a seeded
hash of each one's identity, its path in the raw data (as `cvpipe diff` identifies images across versions).
An image whose bytes change keeps its place, so a new version in which only image contents changed keeps every
split as it was (and data_prep can patch its previous version). An added or removed image moves only itself in
that order (one image removed of 2,000 moved no other in tests/data/test_split_stability.py; the seeded shuffle
of the whole list used before moved about 40 %). A relabelled image changes what its classes' passes want, and
the greedy passes then move more: one image of 2,000 given a rare class moved 255-379 others (13-19 %)."""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from cvpipe.data.diff import image_keys
from cvpipe.data.schema import SPLITS, DetectionDataset


def seeded_order(keys: list[str], seed: int) -> list[str]:
    """A sort key per image: sha256 of the seed and its identity (its place depends on nothing else)."""
    return [hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys]


def stratified_split(ds: DetectionDataset, ratios: tuple[float, float, float], seed: int) -> dict[int, str]:
    """image_id -> split name, by iterative stratification (Sechidis et al., 2011) on class presence.

    Repeatedly take the class with the fewest images still unassigned and give each of those images to the
    split that still wants most images of that class (ties: the split that wants most images overall, then
    the first); every class an image holds counts against what its split wants. Images without objects fill
    the overall ratios last. A split with ratio 0 gets nothing.
    """
    r = np.asarray(ratios, dtype=float)
    if (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"split ratios must be non-negative with a positive sum, got {ratios}")
    r = r / r.sum()
    # only the two columns the order needs (a copy of the whole table cost 10^2 MB at 10^5 images)
    image_ids = ds.images["image_id"].to_numpy()
    order = np.lexsort((image_ids, np.array(seeded_order(image_keys(ds.images).tolist(), seed))))
    image_ids = image_ids[order]
    cats = np.unique(ds.annotations["category_id"].to_numpy())
    presence = np.zeros((len(image_ids), len(cats)), dtype=bool)
    row_of = pd.Series(np.arange(len(image_ids)), index=image_ids)
    row_of = row_of[~row_of.index.duplicated(keep="last")]  # an id given twice (hostile markup): its last row
    rows = row_of.reindex(ds.annotations["image_id"].to_numpy()).fillna(-1).to_numpy(np.int64)
    known = rows >= 0  # boxes of images not being split are not counted
    presence[rows[known], np.searchsorted(cats, ds.annotations["category_id"].to_numpy()[known])] = True
    want_class = presence.sum(0)[None, :] * r[:, None]  # splits x classes, counts still wanted
    want_total = len(image_ids) * r
    closed = np.where(r > 0, 0.0, -np.inf)  # ratio-0 splits never win
    split_of = np.full(len(image_ids), -1)

    def assign(k: int, score: np.ndarray) -> None:
        s = int(np.argmax(score + closed))
        split_of[k] = s
        want_class[s] -= presence[k]
        want_total[s] -= 1

    remaining = presence.copy()
    while remaining.any():
        counts = remaining.sum(0)
        c = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for k in np.flatnonzero(remaining[:, c]):  # in the seeded order
            assign(int(k), want_class[:, c] * 1e6 + want_total)
            remaining[k] = False
    for k in np.flatnonzero(split_of < 0):  # images without objects
        assign(int(k), want_total)
    return {int(i): SPLITS[s] for i, s in zip(image_ids.tolist(), split_of.tolist())}


_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


def _split_of_path(path: str) -> str | None:
    """'train2017/x.jpg', 'images/val/x.jpg' -> the split a folder name says; None if none or several."""
    found = set()
    for part in path.replace("\\", "/").split("/")[:-1]:
        word = re.sub(r"\d+$", "", part.lower())  # train2017 -> train
        if word in _SPLIT_WORDS:
            found.add(_SPLIT_WORDS[word])
    return found.pop() if len(found) == 1 else None


def source_splits(ds: DetectionDataset) -> dict[int, str]:
    """image_id -> split recorded by the source: VOC's ImageSets/Main/{train,val,test}.txt (extra `imageset`),
    COCO's coco_url (.../val2017/...) or a folder of the image's path (YOLO images/train/..., files under
    val2017/...). Images without one are left out."""
    out = {}
    for r in ds.images.itertuples():
        extra = json.loads(r.extra) if r.extra else {}
        url = extra.get("coco_url") or ""
        split = _SPLIT_WORDS.get(str(extra.get("imageset", ""))) or \
            (_split_of_path(urlparse(url).path) if url else None) or _split_of_path(r.source or r.file_name)
        if split:
            out[int(r.image_id)] = split
    return out


def split_table(ds: DetectionDataset) -> list[dict]:
    rows = []
    for s in SPLITS:
        sub = ds.split(s)
        crowd = sub.annotations["iscrowd"] == 1
        rows.append({"split": s, "images": len(sub.images), "boxes": int((~crowd).sum()), "crowd": int(crowd.sum()),
                     "classes present": int(sub.annotations["category_id"].nunique()),
                     "negatives": int((~sub.images["image_id"].isin(sub.annotations["image_id"])).sum())})
    return rows
