"""Held-out data stays held out: the digest of the test split behind a gate decision, the images a model was
trained on (model_train records them), and the check that the two do not overlap.

Images are named by content (data_prep stores each as its sha256), so an image copied into another split, or
into another data_prep run, is still recognised.
"""

from __future__ import annotations

import hashlib
import json

from cvpipe.data.schema import DetectionDataset

TRAINING_SPLITS = ("train", "val")  # val picks the best checkpoint: it shapes the model as well
SHORT = 16  # hex characters kept per image in a training record (64 bits: collisions are negligible)


def image_digests(ds: DetectionDataset, splits: tuple[str, ...]) -> list[str]:
    """Sorted content digests (sha256 hex) of the images in `splits`."""
    rows = ds.images[ds.images["split"].isin(list(splits))]
    return sorted({str(d) for d in rows["digest"]})


def split_digest(gt: dict, digest_of: dict[int, str]) -> str:
    """sha256 of what a decision was made on: the images (by content) and their annotations (boxes, classes,
    crowd flags), independent of ids and order."""
    images = sorted(digest_of[int(i["id"])] for i in gt["images"])
    anns = sorted((digest_of[int(a["image_id"])], int(a["category_id"]), [round(float(v), 3) for v in a["bbox"]],
                   int(a.get("iscrowd", 0))) for a in gt["annotations"])
    return hashlib.sha256(json.dumps({"images": images, "annotations": anns}).encode()).hexdigest()


def trained_on(ds: DetectionDataset, splits: tuple[str, ...] = TRAINING_SPLITS) -> dict:
    """The record model_train keeps in its summary: which images shaped the model (short digests; all of the
    splits, also train images that max_train_images left out: the safe side)."""
    digests = sorted({d[:SHORT] for d in image_digests(ds, splits)})
    return {"splits": list(splits), "images": len(digests), "digests": digests}


def leakage_criterion(test_digests: list[str], training: dict | None) -> dict:
    """A gate criterion: refused when any test image was among the candidate's training images."""
    if not isinstance(training, dict) or not isinstance(training.get("digests"), list):
        return {"name": "held-out data", "verdict": "promoted", "known": False,
                "reason": "the candidate's training images are not recorded (trained before cvpipe kept them)"}
    seen = {str(d)[:SHORT] for d in training["digests"]}
    leaked = sum(1 for d in test_digests if d[:SHORT] in seen)
    if leaked:
        return {"name": "held-out data", "verdict": "refused", "known": True, "leaked_images": leaked,
                "reason": f"{leaked} of {len(test_digests)} test images were in the candidate's training data "
                          f"({', '.join(training.get('splits', []))}): its AP on them proves nothing"}
    return {"name": "held-out data", "verdict": "promoted", "known": True, "leaked_images": 0,
            "reason": f"none of the {len(test_digests)} test images was among its {len(seen)} training images"}


def held_out_record(ds: DetectionDataset, split: str, gt: dict) -> dict:
    """What a decision was made on: {"split", "images", "digest", "digests"} for the images of `gt` (a COCO
    dict of the split, perhaps cut by max_images); "digests" is for the leakage check, not for the record."""
    digest_of = {int(r.image_id): str(r.digest) for r in ds.images.itertuples()}
    digests = sorted(digest_of[int(i["id"])] for i in gt["images"])
    return {"split": split, "images": len(digests), "digest": split_digest(gt, digest_of), "digests": digests}
