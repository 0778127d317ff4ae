"""ClassMap: the one mapping between a model's contiguous labels (0..K-1, its output channels), the class
names, and the dataset's category ids (COCO's 1..90 with gaps, or a VOC/YOLO project's own ids)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClassMap:
    names: tuple[str, ...]  # label -> name
    category_ids: tuple[int, ...]  # label -> dataset category id

    def __post_init__(self):
        if len(self.names) != len(self.category_ids):
            raise ValueError(f"{len(self.names)} class names but {len(self.category_ids)} category ids")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category ids repeat: {list(self.category_ids)}")

    @classmethod
    def from_names(cls, names: Sequence[str], category_ids: Sequence[int] | None = None) -> ClassMap:
        """Names in label order; category ids default to the labels themselves."""
        ids = range(len(names)) if category_ids is None else category_ids
        return cls(tuple(str(n) for n in names), tuple(int(i) for i in ids))

    @classmethod
    def from_coco_categories(cls, categories: Iterable[Mapping]) -> ClassMap:
        """COCO `categories` entries, labelled in ascending id order (COCO's and mmdetection's convention)."""
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(tuple(str(c["name"]) for c in cats), tuple(int(c["id"]) for c in cats))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def label_of(self) -> dict[int, int]:
        """category id -> label."""
        return {c: i for i, c in enumerate(self.category_ids)}

    def category_id(self, label: int) -> int:
        return self.category_ids[int(label)]

    def name(self, label: int) -> str:
        return self.names[int(label)]

    def to_json(self) -> dict:
        return {"class_names": list(self.names), "category_ids": list(self.category_ids)}

    def subset_for(self, other: ClassMap) -> dict[int, int]:
        """label in self -> label in `other` for the classes both name (case-insensitive); used to score a
        model on a dataset with fewer classes (e.g. the 80-class COCO model on 6 of them). Names, not ids,
        decide: two projects' ids need not mean the same class."""
        by_name = {n.lower(): i for i, n in enumerate(other.names)}
        return {label: by_name[n.lower()] for label, n in enumerate(self.names) if n.lower() in by_name}
