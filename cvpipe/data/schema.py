"""The canonical detection dataset every step exchanges.

On disk (one directory, the `dataset` entity):
    images.parquet       image_id, file_name, width, height, digest, blob, source, split, extra
    annotations.parquet  ann_id, image_id, category_id, x, y, w, h, area, iscrowd, extra
    categories.parquet   category_id, name, supercategory, label
    coco.json            the same data as COCO instances JSON (one file per split after data_prep:
                         coco_train.json, coco_val.json, coco_test.json)

Pixel files live in the separate content-addressed `images` entity, named by `blob`
("<sha256>.<ext>"); `source` is the image's path inside the raw data, `file_name` its name in the source's
markup. Boxes are xywh in pixels of the stored image. `category_id` keeps the source's
ids (COCO ids for COCO data); `label` is the contiguous training index (0..K-1), -1 until data_prep
assigns it. `extra` (images and annotations) is a JSON string with source fields that have no column
(COCO: license, coco_url, flickr_url, segmentation, ...); `to_coco` writes image fields and segmentations
back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cvpipe.vision.classmap import ClassMap

IMAGE_COLUMNS = {
    "image_id": "int64",
    "file_name": "string",
    "width": "int64",
    "height": "int64",
    "digest": "string",
    "blob": "string",
    "source": "string",
    "split": "string",
    "extra": "string",
}
ANNOTATION_COLUMNS = {
    "ann_id": "int64",
    "image_id": "int64",
    "category_id": "int64",
    "x": "float64",
    "y": "float64",
    "w": "float64",
    "h": "float64",
    "area": "float64",
    "iscrowd": "int64",
    "extra": "string",
}
CATEGORY_COLUMNS = {"category_id": "int64", "name": "string", "supercategory": "string", "label": "int64"}
SPLITS = ("train", "val", "test")


def _frame(rows: list[dict] | pd.DataFrame | None, columns: dict[str, str], defaults: dict) -> pd.DataFrame:
    df = pd.DataFrame(rows if rows is not None else [])
    for col, val in defaults.items():
        if col not in df:
            df[col] = val
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"missing columns {missing}")
    return df[list(columns)].astype(columns).reset_index(drop=True)


@dataclass
class DetectionDataset:
    images: pd.DataFrame
    annotations: pd.DataFrame
    categories: pd.DataFrame

    @classmethod
    def build(cls, images, annotations, categories) -> DetectionDataset:
        """Normalise rows (lists of dicts or frames) to the canonical columns and dtypes."""
        return cls(
            _frame(images, IMAGE_COLUMNS, {"source": "", "split": "", "digest": "", "blob": "", "extra": "{}"}),
            _frame(annotations, ANNOTATION_COLUMNS, {"extra": "{}", "iscrowd": 0}),
            _frame(categories, CATEGORY_COLUMNS, {"supercategory": "", "label": -1}),
        )

    # ---- storage -------------------------------------------------------------------------
    def save(self, directory: str | Path, coco_json: bool = True) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.images.to_parquet(d / "images.parquet", index=False)
        self.annotations.to_parquet(d / "annotations.parquet", index=False)
        self.categories.to_parquet(d / "categories.parquet", index=False)
        if coco_json:
            splits = sorted(s for s in self.images["split"].unique() if s)
            if splits:
                for s in splits:
                    (d / f"coco_{s}.json").write_text(json.dumps(self.to_coco(split=s)))
            else:
                (d / "coco.json").write_text(json.dumps(self.to_coco()))

    @classmethod
    def load(cls, directory: str | Path) -> DetectionDataset:
        d = Path(directory)
        return cls.build(
            pd.read_parquet(d / "images.parquet"),
            pd.read_parquet(d / "annotations.parquet"),
            pd.read_parquet(d / "categories.parquet"),
        )

    # ---- views ----------------------------------------------------------------------------
    def split(self, name: str) -> DetectionDataset:
        imgs = self.images[self.images["split"] == name]
        anns = self.annotations[self.annotations["image_id"].isin(imgs["image_id"])]
        return DetectionDataset.build(imgs, anns, self.categories)

    def to_coco(self, split: str | None = None) -> dict:
        """COCO instances dict; `file_name` is the blob name inside the `images` entity."""
        ds = self.split(split) if split else self
        images = []
        for r in ds.images.itertuples():
            extra = json.loads(r.extra) if r.extra else {}
            images.append({**extra, "id": int(r.image_id), "file_name": r.blob or r.file_name, "width": int(r.width),
                           "height": int(r.height), "original_file_name": r.file_name})
        anns = []
        for r in ds.annotations.itertuples():
            ann = {"id": int(r.ann_id), "image_id": int(r.image_id), "category_id": int(r.category_id),
                   "bbox": [float(r.x), float(r.y), float(r.w), float(r.h)], "area": float(r.area),
                   "iscrowd": int(r.iscrowd)}
            extra = json.loads(r.extra) if r.extra else {}
            if "segmentation" in extra:
                ann["segmentation"] = extra["segmentation"]
            anns.append(ann)
        cats = [{"id": int(r.category_id), "name": r.name, "supercategory": r.supercategory}
                for r in ds.categories.itertuples()]
        return {"images": images, "annotations": anns, "categories": cats}

    @property
    def class_names(self) -> list[str]:
        """Names in training-label order (label 0 first); categories without a label are left out."""
        cats = self.categories[self.categories["label"] >= 0].sort_values("label")
        return list(cats["name"])

    def class_map(self) -> ClassMap:
        """The vision core's ClassMap of the labelled categories: names and category ids in label order."""
        cats = self.categories[self.categories["label"] >= 0].sort_values("label")
        return ClassMap.from_names(list(cats["name"]), [int(c) for c in cats["category_id"]])

    def label_to_category_id(self) -> dict[int, int]:
        return dict(enumerate(self.class_map().category_ids))
