"""A new data version written as a change of the previous one, when only the bytes of some images changed.

data_load's result depends on the markup (COCO JSON, VOC XML, YOLO txt: every file of the source that is not
an image), on which files exist, and on each image's content digest and header (size, readable or not). When a
data source changes only in the bytes of images whose size and readability stay as they were, every row of the
previous version but those images' `digest` and `blob` is what a full run would write again. Then the previous
version is reused: its tables patched, its stored images shared (only the new contents are stored), no markup
parsed. Anything else (markup changed, files added or removed, an image that changed size or became
unreadable, other params or code) is a full run. `tests/data/test_incremental_version.py` checks that the
patched version equals a full run's, table for table and file for file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvpipe.data.schema import IMAGE_EXTS, DetectionData, ImageFiles
from cvpipe.pipeline.step import Resolved

if TYPE_CHECKING:
    from cvpipe.pipeline.step import SourceDigest
    from cvpipe.store.store import StoredFiles

log = logging.getLogger(__name__)


@dataclass
class PreviousVersion:
    """The last complete data_load run with the same params and code, as the runner hands it to the step:
    its verified `dataset` folder, and its images read through the store (`images()`: None off a local store)."""

    run_id: str
    directory: Path
    images: Callable[[], StoredFiles | None]
    summary: dict[str, Any]  # its run's summary


def resolve_previous(params: Any, store: Any, input_runs: dict[str, str | None]) -> Resolved:
    """data_load's `previous`, resolved by the runner. The result is the same with it or without it, so it is
    not part of the cache key, and it is looked for only when the step runs (a reused run reads nothing more)."""
    return Resolved(None, lambda: _previous_version(params, store), keyed=False)


def _previous_version(params: Any, store: Any) -> PreviousVersion | None:
    rec = _last_run(store, "data_load", params) if store is not None else None
    if rec is None:
        return None
    return PreviousVersion(rec.run_id, store.materialize(rec, "dataset"),
                           lambda: store.object_view(rec, "images", verify=False), rec.manifest.get("summary") or {})


def _last_run(store: Any, step: str, params: Any, also: Callable[[Any], bool] = lambda rec: True) -> Any:
    """The newest complete run of `step` with these params and the step's current code (and `also`)."""
    from cvpipe.pipeline.code import code_fingerprint

    code, wanted = code_fingerprint(f"cvpipe.steps.{step}")["fingerprint"], params.model_dump(mode="json")
    runs = [r for r in store.list_runs(step) if r.complete and r.manifest.get("params") == wanted
            and (r.manifest.get("code") or {}).get("fingerprint") == code and also(r)]
    return runs[-1] if runs else None


def source_layout(file_digests: dict[str, str]) -> dict[str, Any]:
    """What of a source decides data_load's result besides the images' bytes, kept in source.json: the digest
    of every markup file, and one digest of all file names (a file added or removed changes it)."""
    names = hashlib.sha256("\n".join(sorted(file_digests)).encode()).hexdigest()
    markup = {rel: d for rel, d in file_digests.items() if not rel.lower().endswith(IMAGE_EXTS)}  # no Path per file
    return {"names": names, "markup": dict(sorted(markup.items()))}


@dataclass
class ImageChange:
    """One image file of the source with other bytes, readable and of the same size before and after."""

    rows: list[int]  # positions in the previous images table (several rows may name one file)
    path: Path
    digest: str


@dataclass
class Plan:
    """How to write the new version from the previous one (`previous`, its run id)."""

    previous: str
    summary: dict[str, Any]  # the previous version's summary
    old: DetectionData  # the previous version, loaded (its images; the rest when used)
    stored: StoredFiles  # the previous version's images
    changes: list[ImageChange]


def plan(previous: PreviousVersion | None, source: SourceDigest, layout: dict[str, Any] | None, root: Path
         ) -> Plan | None:
    """The previous version and the image changes that turn it into this one (whose source has `layout`), or
    None when a full run is needed (see the module doc)."""
    from cvpipe.data.load import read_source_info

    if previous is None or layout is None or source.file_digests is None:
        return None
    if read_source_info(previous.directory).get("layout") != layout:
        return None  # markup changed, or files added or removed (decided before any table is read)
    old = DetectionData.load(previous.directory)
    changed: dict[str, list[int]] = {}
    for i, (rel, before) in enumerate(zip(old.images["source"].tolist(), old.images["digest"].tolist())):
        now = source.file_digests.get(rel, "")
        if before != now:
            if not before or not now:  # was or is missing / unreadable: its findings change
                return None
            changed.setdefault(rel, []).append(i)
    if not changed:
        return None
    changes = [ImageChange(rows, root / rel, source.file_digests[rel]) for rel, rows in changed.items()]
    if not _same_headers(old, changes):
        return None
    stored = previous_images(previous)
    if stored is None:
        return None
    log.info("data_load: %d image files changed since run %s, nothing else: writing the version as a change of it",
             len(changes), previous.run_id)
    return Plan(previous.run_id, previous.summary, old, stored, changes)


def previous_images(previous: PreviousVersion | None) -> StoredFiles | None:
    """The previous version's images in the store, to be shared by the new version (None: there is none, the
    store is not local, or an object of it is gone, which a full run stores again)."""
    from cvpipe.store.store import IntegrityError

    if previous is None:
        return None
    try:
        return previous.images()
    except IntegrityError as e:
        log.warning("data_load: not sharing the images of run %s: %s", previous.run_id, e)
        return None


def shared(stored: StoredFiles | None, blobs: set[str], folder: Path) -> ImageFiles:
    """The new version's `images` entity: the previous version's objects it names, indexed, plus the new files in
    `folder` (a plain folder entity when there is no previous version)."""
    if stored is None:
        return ImageFiles(folder)
    return ImageFiles.stored_plus(stored.subset(sorted(blobs & set(stored.digests))), folder)


def _same_headers(old: DetectionData, changes: list[ImageChange]) -> bool:
    """Whether every changed image reads as its rows say: readable, and of their size (so the rows keep it)."""
    from cvpipe.data.load import inspect_images

    for change, info in zip(changes, inspect_images([c.path for c in changes], "serial")):
        if info.error or info.digest != change.digest:
            return False
        for i in change.rows:
            if (int(old.images.at[i, "width"]), int(old.images.at[i, "height"])) != (info.width, info.height):
                return False
    return True


def apply(plan: Plan, source_info: dict[str, Any], folder: Path) -> DetectionData:
    """The previous version with the changed images' digest and blob (what a full run would write), their new
    contents linked into `folder`."""
    from cvpipe.data.load import copy_or_link

    images = plan.old.images.copy()
    for change in plan.changes:
        for i in change.rows:
            blob = f"{change.digest}{Path(str(images.at[i, 'file_name'])).suffix.lower()}"  # as normalise names it
            images.at[i, "digest"], images.at[i, "blob"] = change.digest, blob
            if blob not in plan.stored.digests and not (folder / blob).exists():
                copy_or_link(change.path, folder / blob)
    return plan.old.patched(images, {**source_info, "format": plan.old.source.get("format", "")})


# ---- data_prep ---------------------------------------------------------------------------------------------
# data_prep's result depends on its input tables, each image's decode verdict (size, readable) and which images
# share bytes (duplicate_image); its split follows each image's path, not its bytes (cvpipe.data.split). When its
# input is a data_load version patched from the one its previous run read (only some images' bytes changed), and
# those images decode as before and share their bytes with no other image, before or after, its previous
# version with their digest and blob changed is what a full run would write; only the report is drawn again.


@dataclass
class PreviousPrep:
    """The last complete data_prep run with the same params and code, made from the data_load version that the
    current input patched: its verified `dataset` folder, and the paths of the images whose bytes changed."""

    run_id: str
    directory: Path
    sources: set[str]
    report: Path  # its report folder: this version's too when no image it draws changed
    summary: dict[str, Any]  # its run's summary: a patched version's too (same tables but two columns)


def resolve_previous_prep(params: Any, store: Any, input_runs: dict[str, str | None]) -> Resolved:
    """data_prep's `previous`, like data_load's: out of the cache key, looked for only when the step runs."""
    return Resolved(None, lambda: _previous_prep(params, store, input_runs.get("dataset")), keyed=False)


def _previous_prep(params: Any, store: Any, load_run: str | None) -> PreviousPrep | None:
    if store is None or load_run is None:
        return None
    change = (store.get_run(load_run, "data_load").manifest.get("summary") or {}).get("incremental") or {}
    if "sources" not in change:
        return None
    rec = _last_run(store, "data_prep", params,
                    lambda r: ((r.manifest.get("inputs") or {}).get("dataset") or {}).get("run_id") == change["from"])
    if rec is None:
        return None
    return PreviousPrep(rec.run_id, store.materialize(rec, "dataset"), set(change["sources"]),
                        store.materialize(rec, "report"), rec.manifest.get("summary") or {})


def report_unchanged(previous: PreviousPrep, dataset: DetectionData, drawn: set[int]) -> bool:
    """Whether a patched version's report is its previous version's: the report draws the images `drawn`
    (chosen by path, `report_candidates`), and its tables and plots depend on nothing a patch changes."""
    images = dataset.images
    changed = set(images.loc[images["source"].isin(previous.sources), "image_id"].astype(int))
    return not changed & drawn


def patch_prep(previous: PreviousPrep | None, dataset: DetectionData, image_path: Callable[[str], Path]
               ) -> DetectionData | None:
    """data_prep's previous version with the changed images' digest and blob, or None when a full run is needed
    (see above). Their new bytes are decoded (and the verdict cached as a full run would)."""
    if previous is None:
        return None
    new = dataset.images
    changed = new[new["source"].isin(previous.sources)]
    if changed.empty:
        return None
    old = DetectionData.load(previous.directory)
    before = old.images.set_index("image_id")
    if not changed["image_id"].isin(before.index).all():
        return None  # a changed image was dropped by the previous run: a full run says what now
    old_digests = before.loc[changed["image_id"], "digest"].tolist()
    shared_now = new["digest"].isin(set(changed["digest"])).sum() > len(changed)
    if shared_now or new["digest"].isin(set(old_digests)).any():
        return None  # duplicate_image would judge differently
    if not _same_verdicts(old_digests, changed, image_path):
        return None
    images = old.images.copy()
    at = images.reset_index().set_index("image_id")["index"]
    for image_id, digest, blob in zip(changed["image_id"], changed["digest"], changed["blob"]):
        images.at[int(at[image_id]), "digest"], images.at[int(at[image_id]), "blob"] = digest, blob
    log.info("data_prep: %d images changed bytes since run %s and decode as before: patching its version",
             len(changed), previous.run_id)
    return old.patched(images)


def _same_verdicts(old_digests: list[str], changed: Any, image_path: Callable[[str], Path]) -> bool:
    """Whether each changed image's new bytes decode as its old bytes did (size and verdict); the new ones are
    checked (and their verdicts cached) by validation's own `decode_checks`."""
    from cvpipe.data.validate import DECODE_FACT, decode_checks
    from cvpipe.store.digests import DigestCache

    checks = decode_checks(changed, image_path, frozenset(), "serial")
    with DigestCache() as cache:
        known = cache.facts(old_digests, DECODE_FACT)
    return all(d in known and known[d] == checks.verdict(k) for k, d in enumerate(old_digests))
