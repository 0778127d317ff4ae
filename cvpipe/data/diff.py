"""What changed between two data versions: images added, removed, changed (other bytes under the same source
path) and images whose labels changed (their boxes or classes), keyed by the image's path in the raw data.

Labels are compared as sets of (class name, box rounded to 0.01 px), so renumbered annotation or category ids
are not a change; a changed class name or a moved box is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from cvpipe.data.schema import DetectionDataset

CHANGES = ("added", "removed", "changed", "labels")


@dataclass
class DataDiff:
    """Source paths per kind of change (sorted), and the image counts of both versions."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # other bytes
    labels: list[str] = field(default_factory=list)  # other boxes or classes (bytes unchanged or not)
    old_images: int = 0
    new_images: int = 0

    def as_json(self) -> dict:
        return asdict(self)

    @property
    def unchanged(self) -> int:
        touched = set(self.changed) | set(self.labels)
        return self.new_images - len(self.added) - len(touched - set(self.added))


def image_keys(images: pd.DataFrame) -> pd.Series:
    """The image's identity across versions: its path in the raw data (its markup name when it has none)."""
    return images["source"].where(images["source"] != "", images["file_name"]).astype(str)


def label_signatures(ds: DetectionDataset) -> pd.Series:
    """One string per image key listing its boxes and classes in a canonical order ('' for no boxes)."""
    keys = pd.Series(image_keys(ds.images).to_numpy(), index=ds.images["image_id"].to_numpy())
    names = ds.categories.set_index("category_id")["name"]
    a = ds.annotations
    if a.empty:
        return pd.Series("", index=keys.to_numpy()).groupby(level=0).first()
    box = (a["category_id"].map(names).fillna("?").astype(str) + ":" + a["x"].round(2).astype(str) + "," +
           a["y"].round(2).astype(str) + "," + a["w"].round(2).astype(str) + "," + a["h"].round(2).astype(str))
    per_image = pd.DataFrame({"key": a["image_id"].map(keys).to_numpy(), "box": box.to_numpy()}).dropna()
    sig = per_image.sort_values(["key", "box"]).groupby("key")["box"].agg("|".join)
    return sig.reindex(pd.Index(keys.unique()), fill_value="")


def diff_datasets(old: DetectionDataset, new: DetectionDataset) -> DataDiff:
    """Added, removed, changed and relabelled images from `old` to `new` (see the module doc)."""
    a = pd.Series(old.images["digest"].to_numpy(), index=image_keys(old.images).to_numpy())
    b = pd.Series(new.images["digest"].to_numpy(), index=image_keys(new.images).to_numpy())
    a, b = a[~a.index.duplicated()], b[~b.index.duplicated()]
    both = a.index.intersection(b.index)
    sig_a, sig_b = label_signatures(old), label_signatures(new)
    relabelled = both[sig_a.reindex(both, fill_value="").to_numpy() != sig_b.reindex(both, fill_value="").to_numpy()]
    return DataDiff(added=sorted(b.index.difference(a.index)), removed=sorted(a.index.difference(b.index)),
                    changed=sorted(both[a[both].to_numpy() != b[both].to_numpy()]), labels=sorted(relabelled),
                    old_images=len(old.images), new_images=len(new.images))
