"""Corrections back into the pipeline: a new raw data version (COCO folder) made of the old data version with the
corrected images' boxes replaced. `cvpipe run CONFIG --set data_load.source=FOLDER` loads it, data_prep
validates it, model_train retrains from it.

The folder is written beside its final place and renamed into it at the end, so a refused or failed import
leaves nothing behind; the data version it came from is an immutable store run and is never touched. Images
go under images/<split>/ so that `data_prep.split_from_source: true` keeps every image in its split (the
held-out test split stays the same images, and before/after AP compare like with like).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cvpipe.data.load import copy_or_link
from cvpipe.data.schema import DetectionDataset


def write_corrected_version(ds: DetectionDataset, images_dir: Path, corrected: dict[int, list[tuple[str, list[float]]]],
                            out: Path) -> dict:
    """Write the corrected data as a COCO folder at `out` (which must not exist); returns what changed."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: give a new folder for the corrected data version")
    cat_of = {r.name: int(r.category_id) for r in ds.categories.itertuples()}
    kept = ds.annotations[~ds.annotations["image_id"].isin(list(corrected))]
    next_id = int(ds.annotations["ann_id"].max()) + 1 if len(ds.annotations) else 1
    anns = [_coco_ann(r) for r in kept.itertuples()]
    for image_id in sorted(corrected):
        for name, (x1, y1, x2, y2) in corrected[image_id]:
            anns.append({"id": next_id, "image_id": int(image_id), "category_id": cat_of[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            next_id += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        images = [_place_image(r, images_dir, tmp) for r in ds.images.itertuples()]
        coco = {"images": images, "annotations": anns,
                "categories": [{"id": int(r.category_id), "name": r.name, "supercategory": r.supercategory}
                               for r in ds.categories.itertuples()]}
        (tmp / "annotations.json").write_text(json.dumps(coco))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    before = ds.annotations[ds.annotations["image_id"].isin(list(corrected))]
    return {"images_corrected": len(corrected), "boxes_before": len(before),
            "boxes_after": sum(len(v) for v in corrected.values()), "annotations": len(anns), "folder": str(out)}


def _coco_ann(r) -> dict:
    ann = {"id": int(r.ann_id), "image_id": int(r.image_id), "category_id": int(r.category_id),
           "bbox": [float(r.x), float(r.y), float(r.w), float(r.h)], "area": float(r.area), "iscrowd": int(r.iscrowd)}
    extra = json.loads(r.extra) if r.extra else {}
    if "segmentation" in extra:
        ann["segmentation"] = extra["segmentation"]
    return ann


def _place_image(r, images_dir: Path, root: Path) -> dict:
    """Link the image under images/<split>/ and return its COCO record (the source's split word dropped from
    coco_url, which data_prep would read before the folder)."""
    split = r.split or "train"
    rel = Path("images") / split / r.blob
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    copy_or_link(Path(images_dir) / r.blob, root / rel)
    extra = {k: v for k, v in (json.loads(r.extra) if r.extra else {}).items() if k != "coco_url"}
    return {**extra, "id": int(r.image_id), "file_name": rel.relative_to("images").as_posix(), "width": int(r.width),
            "height": int(r.height)}


def held_out_ap(ds: DetectionDataset, corrected: dict[int, list[tuple[str, list[float]]]],
                predictions: pd.DataFrame, split: str = "test") -> dict:
    """AP of the same out-of-fold predictions on the held-out split, against the labels before and after the
    corrections: how much the fixes change what the evaluation measures (retraining is `cvpipe run`'s part)."""
    from .apgain import mean_ap
    from .boxes import BoxTable, labels_of

    ids = set(ds.images.loc[ds.images["split"] == split, "image_id"].astype(int))
    before = labels_of(ds)
    label_of = {n: i for i, n in enumerate(ds.class_names)}
    fixed_ids = [i for i in corrected if i in ids]
    keep = np.flatnonzero(~np.isin(before.image_id, fixed_ids))
    new = [(i, label_of[n], b) for i in fixed_ids for n, b in corrected[i]]
    after = BoxTable.build(np.r_[before.image_id[keep], [r[0] for r in new]],
                           np.r_[before.label[keep], [r[1] for r in new]],
                           np.concatenate([before.xyxy[keep], np.array([r[2] for r in new]).reshape(-1, 4)]))
    preds = BoxTable.from_frame(predictions)

    def on_split(t: BoxTable) -> BoxTable:
        return t.take(np.flatnonzero(np.isin(t.image_id, list(ids))))

    return {"split": split, "images": len(ids), "images_corrected": len(fixed_ids),
            "ap_before": round(mean_ap(on_split(before), on_split(preds)), 3),
            "ap_after": round(mean_ap(on_split(after), on_split(preds)), 3)}
