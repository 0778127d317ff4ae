"""The canonical detection dataset every step exchanges.

On disk (one directory, the `dataset` entity):
    images.parquet       image_id, file_name, width, height, digest, blob, source, split, extra
    annotations.parquet  ann_id, image_id, category_id, x, y, w, h, area, iscrowd, extra
    categories.parquet   category_id, name, supercategory, label

The COCO instances JSON of a version is not stored: `cvpipe coco RUN [--split S]` (or `to_coco`/`write_coco`)
writes it from the tables on demand. Rewriting it with every version cost more than the rest of writing a
version (100,000 images, 650,000 boxes: a Python dict per box, then `json.dumps`), for a file nothing in the
pipeline reads.

Pixel files live in the separate content-addressed `images` entity, named by `blob`
("<sha256>.<ext>"); `source` is the image's path inside the raw data, `file_name` its name in the source's
markup. Boxes are xywh in pixels of the stored image. `category_id` keeps the source's
ids (COCO ids for COCO data); `label` is the contiguous training index (0..K-1), -1 until data_prep
assigns it. `extra` (images and annotations) is a JSON string with source fields that have no column
(COCO: license, coco_url, flickr_url, segmentation, ...); `to_coco` writes image fields and segmentations
back.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvpipe.pipeline.entity import link_tree

if TYPE_CHECKING:  # step modules import this one: `cvpipe --help` and a reused run import neither pandas nor cv2

    import pandas as pd

    from cvpipe.store.store import StoredFiles
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
IMAGE_DEFAULTS = {"source": "", "split": "", "digest": "", "blob": "", "extra": "{}"}  # for columns a source lacks
ANNOTATION_DEFAULTS = {"extra": "{}", "iscrowd": 0}
CATEGORY_DEFAULTS = {"supercategory": "", "label": -1}


def _frame(rows: list[dict] | pd.DataFrame | None, columns: dict[str, str], defaults: dict) -> pd.DataFrame:
    import pandas as pd

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
        return cls(_frame(images, IMAGE_COLUMNS, IMAGE_DEFAULTS),
                   _frame(annotations, ANNOTATION_COLUMNS, ANNOTATION_DEFAULTS),
                   _frame(categories, CATEGORY_COLUMNS, CATEGORY_DEFAULTS))

    # ---- storage -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.images.to_parquet(d / "images.parquet", index=False)
        self.annotations.to_parquet(d / "annotations.parquet", index=False)
        self.categories.to_parquet(d / "categories.parquet", index=False)

    def write_coco(self, path: str | Path, split: str | None = None) -> Path:
        """Write the COCO instances JSON of the whole dataset or of one split to `path` (a file)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
        out = Path(path)
        out.write_text(json.dumps(self.to_coco(split=split)))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> DetectionDataset:
        import pandas as pd

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

    def to_coco(self, split: str | None = None, max_images: int | None = None) -> dict:
        """COCO instances dict; `file_name` is the blob name inside the `images` entity. `max_images`: only the
        first N images by id (quick evaluations, calibration sets)."""
        ds = self.split(split) if split else self
        if max_images is not None and max_images < len(ds.images):
            keep = ds.images.sort_values("image_id").head(max_images)
            ds = DetectionDataset.build(keep, ds.annotations[ds.annotations["image_id"].isin(keep["image_id"])],
                                        ds.categories)
        im, an = ds.images, ds.annotations  # column lists, not a Python object per row: 10^5 rows
        images = [{**_extra(extra), "id": image_id, "file_name": blob if isinstance(blob, str) and blob else file_name,
                   "width": width, "height": height, "original_file_name": file_name}
                  for image_id, blob, file_name, width, height, extra in
                  zip(*(im[c].tolist() for c in ("image_id", "blob", "file_name", "width", "height", "extra")))]
        anns = []
        for ann_id, image_id, category_id, x, y, w, h, area, iscrowd, extra in zip(
                *(an[c].tolist() for c in ("ann_id", "image_id", "category_id", "x", "y", "w", "h", "area", "iscrowd",
                                           "extra"))):
            ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "area": area,
                   "iscrowd": iscrowd}
            parsed = _extra(extra) if isinstance(extra, str) and '"segmentation"' in extra else {}  # rarely parsed
            if "segmentation" in parsed:
                ann["segmentation"] = parsed["segmentation"]
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
        from cvpipe.vision.classmap import ClassMap

        cats = self.categories[self.categories["label"] >= 0].sort_values("label")
        return ClassMap.from_names(list(cats["name"]), [int(c) for c in cats["category_id"]])

    def label_to_category_id(self) -> dict[int, int]:
        return dict(enumerate(self.class_map().category_ids))


def _extra(text: object) -> dict:
    """A row's `extra` JSON as a dict ("{}" and empty without parsing)."""
    return json.loads(text) if isinstance(text, str) and text not in ("", "{}") else {}


# ---- the entities steps exchange (cvpipe.pipeline.entity: the class owns load and save) ----------------------
KEEPABLE = {"annotations": ("annotations.parquet",), "categories": ("categories.parquet",),
            "findings": ("findings.json", "findings.parquet")}  # a dataset folder's parts and their files


def _read_table(name: str, columns: dict[str, str], defaults: dict) -> Callable[[Path], pd.DataFrame]:
    def read(directory: Path) -> pd.DataFrame:
        import pandas as pd

        return _frame(pd.read_parquet(directory / name), columns, defaults)
    return read


def _read_findings(directory: Path) -> list[dict[str, Any]]:
    from cvpipe.data.validate import read_findings

    return read_findings(directory)


def _read_source(directory: Path) -> dict[str, Any]:
    from cvpipe.data.load import read_source_info

    return read_source_info(directory)


_PART_READERS: dict[str, Callable[[Path], Any]] = {
    "annotations": _read_table("annotations.parquet", ANNOTATION_COLUMNS, ANNOTATION_DEFAULTS),
    "categories": _read_table("categories.parquet", CATEGORY_COLUMNS, CATEGORY_DEFAULTS),
    "findings": _read_findings, "source": _read_source}  # DetectionData's parts read when first used
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class DetectionData(DetectionDataset):
    """The `dataset` entity of data_load and data_prep: the canonical tables (and COCO JSON), every finding the
    steps so far reported about the data (findings.{json,parquet}), and what data_load read (source.json)."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    # parts ("annotations", "categories", "findings") that are, unchanged, those of the stored version in this
    # folder: `save` copies their files instead of encoding the same rows again (a version patched from the
    # previous one: 650,000 boxes and 90,000 findings at 100,000 images)
    kept: dict[str, Path] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> DetectionData:
        """The version stored in `directory`: its images table now, every other part when it is first used (a
        version patched from this one reads nothing else)."""
        import pandas as pd

        data = cls.__new__(cls)
        data.images = _frame(pd.read_parquet(Path(directory) / "images.parquet"), IMAGE_COLUMNS, IMAGE_DEFAULTS)
        data.kept = {}
        data.__dict__["_stored"] = Path(directory)
        return data

    if not TYPE_CHECKING:  # hidden from the type checker, which would take any attribute name as valid
        def __getattr__(self, name: str) -> Any:
            """A part of a loaded version not read yet (see `load`), read now (only called for attributes that
            are not set)."""
            stored = self.__dict__.get("_stored")
            if stored is None or name not in _PART_READERS:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            value = _PART_READERS[name](stored)
            setattr(self, name, value)
            return value

    def patched(self, images: pd.DataFrame, source: dict[str, Any] | None = None) -> DetectionData:
        """This loaded version with another images table (and source info): every other part is its own, read
        only if something uses it, and saved as a copy of its file (`kept`)."""
        stored = self.__dict__.get("_stored")
        if stored is None:
            raise ValueError("only a version loaded from its folder (DetectionData.load) can be patched")
        new = copy.copy(self)  # its parts not read yet stay unread
        new.images = images
        if source is not None:
            new.source = source
        new.kept = {part: stored for part in KEEPABLE}
        return new

    @classmethod
    def of(cls, ds: DetectionDataset, findings: list[dict[str, Any]],
           source: dict[str, Any] | None = None) -> DetectionData:
        return cls(ds.images, ds.annotations, ds.categories, list(findings), dict(source or {}))

    def save(self, directory: str | Path) -> None:
        from cvpipe.data.load import write_source_info

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.images.to_parquet(d / "images.parquet", index=False)
        for part in ("annotations", "categories"):
            if not self._copy_kept(part, d):
                getattr(self, part).to_parquet(d / f"{part}.parquet", index=False)
        self.save_findings(d)
        if self.source:  # no local paths in it: they differ from run to run and say nothing about the data
            write_source_info(d, self.source)

    def save_findings(self, directory: Path) -> None:
        """findings.{json,parquet} in `directory` (the dataset's, or a report's)."""
        from cvpipe.data.validate import write_findings

        if not self._copy_kept("findings", directory):
            write_findings(self.findings, directory)

    def _copy_kept(self, part: str, directory: Path) -> bool:
        sources = [self.kept[part] / name for name in KEEPABLE[part]] if part in self.kept else []
        if not sources or not all(src.is_file() for src in sources):
            return False  # not kept, or a version written before the part had these files: encoded again
        directory.mkdir(parents=True, exist_ok=True)
        for src in sources:
            shutil.copyfile(src, directory / src.name)  # a copy: a link would share the stored file's inode
        return True


class ImageFiles:
    """The content-addressed `images` entity: image files named by content (`blob` = <sha256><ext>).

    Either a folder (`directory`; `names` limits it to some of its files) or, handed out by the runner from a
    local store, the stored objects read through (`stored`), with no folder of links built for a version of
    100,000 images: `path(blob)` finds a file either way, and `directory` builds the folder only when a step
    asks for it (`folder`). `subset` keeps what it is: data_prep keeps most of data_load's images, and a
    subset of stored files is committed as an index, with no file linked again.

    Stored files are checked against their digests when they are read (`verify`, from the runner): the first
    few one by one, as `path` hands them out, then all at once (a step that reads them all pays one batch; a
    version patched from the previous one reads the few that changed, and passes the rest on unread)."""

    CHECKED_ONE_BY_ONE = 32

    def __init__(self, directory: str | Path | None = None, names: tuple[str, ...] | None = None, *,
                 stored: StoredFiles | None = None, folder: Callable[[], Path] | None = None,
                 added: Path | None = None, verify: Callable[[list[str]], None] | None = None):
        if directory is None and folder is None:
            raise ValueError("ImageFiles needs a directory or a way to build one")
        self._directory = Path(directory) if directory is not None else None
        self.names = names
        self.stored = stored
        self._folder = folder
        self.added = added  # with `stored`: a folder of the files that are not stored yet (a version's new images)
        self._verify = verify
        self._verified: set[str] = set()

    @classmethod
    def load(cls, directory: str | Path) -> ImageFiles:
        return cls(Path(directory))

    @classmethod
    def from_store(cls, stored: StoredFiles, folder: Callable[[], Path],
                   verify: Callable[[list[str]], None] | None = None) -> ImageFiles:
        """The runner's read-through input (see the class doc): `verify(names)` raises IntegrityError for a
        stored file that does not hold its digest's content."""
        return cls(stored=stored, folder=folder, verify=verify)

    @classmethod
    def stored_plus(cls, stored: StoredFiles, added: Path) -> ImageFiles:
        """Stored files and a folder of new ones (`added`), committed as one entity: the new files are put in
        the store, the stored ones only indexed (a version that changed a few images of a large one)."""
        def folder() -> Path:
            raise ValueError("this images entity is stored files plus new ones: it has no folder of its own")
        return cls(stored=stored, folder=folder, added=added)

    @property
    def directory(self) -> Path:
        """A folder holding every file (for steps that want one: training, evaluation); built on first use."""
        if self._directory is None:
            assert self._folder is not None  # __init__ requires one of them
            self._directory = self._folder()
        return self._directory

    def save(self, directory: str | Path) -> None:
        if self.stored is None:
            link_tree(self.directory, Path(directory), self.names)
            return
        dest = Path(directory)
        dest.mkdir(parents=True, exist_ok=True)
        stored = {name: self.stored.path(name) for name in self.stored.digests}
        added = {p.name: str(p) for p in self.added.iterdir()} if self.added is not None else {}
        for name, path in {**stored, **added}.items():  # what a runner without a store keeps
            try:
                os.link(path, dest / name)
            except OSError:  # another file system
                shutil.copyfile(path, dest / name)

    def path(self, blob: str) -> Path:
        """The file of one image (a plain name inside the entity)."""
        if not blob or Path(blob).name != blob:
            raise ValueError(f"not an image file name: {blob!r}")
        if self.stored is not None:
            if blob in self.stored.digests:
                self._check(blob)
                return Path(self.stored.path(blob))
            if self.added is not None and (self.added / blob).is_file():
                return self.added / blob
            raise ValueError(f"{blob} is not in this images entity")
        return self.directory / blob

    def _check(self, blob: str) -> None:
        """Verify a stored file before it is first read (see the class doc)."""
        if self._verify is None or blob in self._verified or self.stored is None:
            return
        if len(self._verified) < self.CHECKED_ONE_BY_ONE:
            self._verify([blob])
            self._verified.add(blob)
        else:  # a step reading many: the rest at once
            self._verify(sorted(set(self.stored.digests) - self._verified))
            self._verify = None

    def subset(self, blobs: set[str] | list[str]) -> ImageFiles:
        if self.added is not None:
            raise ValueError("a subset of stored files plus new ones is not supported: subset the stored files")
        names = tuple(sorted(set(blobs)))
        if self.stored is not None:
            return ImageFiles(self._directory, names, stored=self.stored.subset(names), folder=self._folder,
                              verify=self._verify)
        return ImageFiles(self.directory, names)


@dataclass(frozen=True)
class TestImage:
    """model_train's `test_image` entity: one image with objects (image.<ext>), ground_truth.json and meta.json
    (which image, and why it was chosen); model_pack packs it as the model's smoke-test image."""

    __test__ = False  # not a pytest class
    directory: Path

    @classmethod
    def load(cls, directory: str | Path) -> TestImage:
        return cls(Path(directory))

    def save(self, directory: str | Path) -> None:
        link_tree(self.directory, Path(directory))

    @property
    def image(self) -> Path | None:
        """image.<ext> (else any image file in the entity), or None when training found no image with objects."""
        files = [p for p in sorted(self.directory.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
        named = [p for p in files if p.stem == "image"]
        return (named or files)[0] if files else None
