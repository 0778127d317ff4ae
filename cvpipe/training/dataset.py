"""A DetectionDataset split as a torch Dataset of (image tensor, targets) for YOLOX training.

Items are asked for by `(index, epoch)` keys (see `EpochSampler`): the augmentation of an item is drawn from
a generator seeded with (seed, epoch, index), so a batch does not depend on the worker count, the process
count or on a resume, and whether augmentation is on is known from the epoch alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cvpipe import vision
from cvpipe.data.schema import DetectionDataset
from cvpipe.vision import clip_xyxy, letterbox

from . import augment as A

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    """What the training transform does while augmentation is on (all off in the no-aug epochs)."""

    mosaic_prob: float = 1.0
    mixup_prob: float = 1.0
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    affine: bool = True
    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.1, 2.0)
    shear: float = 2.0
    hsv_prob: float = 1.0
    flip_prob: float = 0.5
    min_box_size: float = 2.0

    @classmethod
    def from_params(cls, p) -> AugmentConfig:
        return cls(mosaic_prob=p.mosaic_prob if p.mosaic else 0.0, mixup_prob=p.mixup_prob if p.mixup else 0.0,
                   mixup_scale=tuple(p.mixup_scale), affine=p.affine, degrees=p.degrees, translate=p.translate,
                   scale=tuple(p.mosaic_scale), shear=p.shear, hsv_prob=p.hsv_prob if p.hsv else 0.0,
                   flip_prob=p.flip_prob if p.flip else 0.0, min_box_size=p.min_box_size)


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 BGR of an image file through the one decoder (cvpipe.vision), with a clear error when it
    is missing or broken."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return vision.read_image(path)
    except vision.ImageDecodeError as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None


def image_records(ds: DetectionDataset, images_dir: Path) -> list[dict]:
    """Per image: id, file path, size, boxes xyxy float32 [N,4] and labels int64 [N] (crowd boxes and
    categories without a training label left out). Vectorised: the boxes of all images are two arrays, and each
    record holds a slice of them (a 100,000-image data version is indexed in about a second, nothing decoded)."""
    label_of = {int(r.category_id): int(r.label) for r in ds.categories.itertuples() if int(r.label) >= 0}
    anns = ds.annotations[(ds.annotations["iscrowd"] == 0) & ds.annotations["category_id"].isin(list(label_of))
                          & (ds.annotations["w"] > 0) & (ds.annotations["h"] > 0)]
    anns = anns.sort_values("image_id", kind="stable")
    xywh = anns[["x", "y", "w", "h"]].to_numpy(np.float32)
    all_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    all_labels = anns["category_id"].map(label_of).to_numpy(np.int64)
    ann_image = anns["image_id"].to_numpy(np.int64)
    images = ds.images.sort_values("image_id")
    ids = images["image_id"].to_numpy(np.int64)
    starts, ends = np.searchsorted(ann_image, ids, "left"), np.searchsorted(ann_image, ids, "right")
    records = []
    for r, a, b in zip(images.itertuples(), starts, ends):
        boxes, labels = (all_boxes[a:b], all_labels[a:b]) if b > a else A.empty_boxes()
        name = r.blob or r.file_name
        records.append({"image_id": int(r.image_id), "path": Path(images_dir) / name, "blob": name,
                        "width": int(r.width), "height": int(r.height), "boxes": boxes, "labels": labels})
    return records


CACHE_BYTES = 4 << 30  # resized images kept in memory per dataset (per data-loader worker): a bound, not all


class YoloxTrainDataset(Dataset):
    """Training samples of one split: mosaic / affine / mixup / HSV / flip, or a plain letterbox.

    __getitem__((index, epoch)) -> (image float32 [3, S, S] BGR 0..255, targets float32 [M, 5] (label, cx, cy, w, h)
    in input pixels, image_id).
    """

    def __init__(self, ds: DetectionDataset, images_dir: Path, img_size: int, aug: AugmentConfig | None,
                 epochs: int, no_aug_epochs: int, seed: int = 0, max_labels: int = 120, cache: bool = True,
                 cache_bytes: int = CACHE_BYTES):
        self.records = image_records(ds, images_dir)
        if not self.records:
            raise ValueError("the training split has no images")
        self.img_size = img_size
        self.aug = aug
        self.aug_until_epoch = max(epochs - no_aug_epochs, 0)  # epochs [0, this) are augmented
        self.seed = seed
        self.max_labels = max_labels
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self.cache_bytes, self.cached_bytes = cache_bytes, 0  # images past the budget are decoded each time

    def __len__(self) -> int:
        return len(self.records)

    def augmenting(self, epoch: int) -> bool:
        return self.aug is not None and epoch < self.aug_until_epoch

    def load_resized(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image i scaled to fit img_size x img_size, its boxes scaled, its labels."""
        rec = self.records[i]
        if self.cache is not None and i in self.cache:
            image, boxes = self.cache[i]
        else:
            image, boxes = A.resize_to_fit(read_image(rec["path"]), rec["boxes"], self.img_size)
            if self.cache is not None and self.cached_bytes + image.nbytes <= self.cache_bytes:
                self.cache[i] = (image, boxes)
                self.cached_bytes += image.nbytes
        return image, boxes.copy(), rec["labels"].copy()

    def augmented(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, s = self.aug, self.img_size
        assert a is not None  # called only while augmenting()
        if rng.random() < a.mosaic_prob:
            picks = [index] + [int(j) for j in rng.integers(0, len(self), 3)]
            parts = [self.load_resized(j) for j in picks]
            image, boxes, labels = A.mosaic([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], rng, s)
            if a.affine:
                image, boxes, labels = A.random_affine(image, boxes, labels, rng, s, a.degrees, a.translate, a.scale,
                                                       a.shear, a.min_box_size)
            else:  # the centre s x s crop of the 2s canvas
                image = np.ascontiguousarray(image[s // 2:s // 2 + s, s // 2:s // 2 + s])
                boxes = boxes - np.float32(s // 2)
                moved = boxes
                boxes = clip_xyxy(moved, s, s)
                keep = A.box_candidates(moved, boxes, a.min_box_size)
                boxes, labels = boxes[keep], labels[keep]
            if rng.random() < a.mixup_prob:
                other, ob, ol = self.load_resized(int(rng.integers(0, len(self))))
                image, boxes, labels = A.mixup(image, boxes, labels, other, ob, ol, rng, a.mixup_scale, a.min_box_size)
        else:
            image, boxes, labels = self.load_resized(index)
            image = A.pad_to_square(image, s)
            if a.affine:  # a milder affine when the image is not part of a mosaic: keep it whole-ish
                image, boxes, labels = A.random_affine(image, boxes, labels, rng, s, a.degrees, a.translate,
                                                       (max(a.scale[0], 0.5), min(a.scale[1], 1.5)), a.shear,
                                                       a.min_box_size)
        if rng.random() < a.hsv_prob:
            image = A.hsv_jitter(image, rng)
        if rng.random() < a.flip_prob:
            image, boxes = A.hflip(image, boxes)
        return image, boxes, labels

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, self.aug_until_epoch)
        if self.augmenting(epoch):
            rng = np.random.default_rng([self.seed, epoch, index])
            image, boxes, labels = self.augmented(index, rng)
            chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        elif self.cache is None:
            rec = self.records[index]
            chw, r = letterbox(read_image(rec["path"]), (self.img_size, self.img_size))
            boxes, labels = rec["boxes"] * np.float32(r), rec["labels"]
        else:  # the cached fit-resized image padded top-left is exactly what letterbox makes
            image, boxes, labels = self.load_resized(index)
            chw = np.ascontiguousarray(A.pad_to_square(image, self.img_size).transpose(2, 0, 1), dtype=np.float32)
        boxes, labels = A.filter_small(boxes, labels, self.img_size, self.img_size, 1.0)
        targets = A.xyxy_to_targets(boxes, labels)[: self.max_labels]
        return torch.from_numpy(chw), torch.from_numpy(targets), self.records[index]["image_id"]


def collate(batch) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack images; pad targets with all-zero rows to the batch's largest count (at least 1 row)."""
    images = torch.stack([b[0] for b in batch])
    most = max(1, max(len(b[1]) for b in batch))
    targets = torch.zeros(len(batch), most, 5)
    for i, (_, t, _) in enumerate(batch):
        targets[i, : len(t)] = t
    return images, targets, [b[2] for b in batch]


class EpochSampler(Sampler):
    """Yields (index, epoch) keys: a seeded shuffle per epoch, split across `world_size` processes.

    Each process gets every world_size-th index of the permutation (padded by wrapping so all processes see
    the same number); with drop_last the tail that does not fill a whole global batch is left out.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def per_rank(self) -> int:
        """Items each process draws per epoch (a whole number of its batches when drop_last)."""
        global_batch = self.batch_size * self.world_size
        if self.drop_last and self.n >= global_batch:
            return (self.n // global_batch) * self.batch_size
        return math.ceil(self.n / self.world_size)

    def __len__(self) -> int:
        return self.per_rank()

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank() * self.world_size
        order = (order * math.ceil(total / max(len(order), 1)))[:total]
        for i in order[self.rank:total:self.world_size]:
            yield (i, self.epoch)
