"""The versioned artifact store.

Layout under the store URL (any fsspec URL: a local folder, s3://bucket/prefix, memory://...):

    {root}/{env}/{pipeline}/{step}/{run_id}/manifest.json      the run's record, written first as
                                                              "running" and last as "complete"/"failed"
    {root}/{env}/{pipeline}/{step}/{run_id}/{entity}/...       plain output entities, file by file
    {root}/{env}/{pipeline}/{step}/{run_id}/_index/{entity}.json  file listing with digests
    {root}/{env}/{pipeline}/{step}/{run_id}/logs/step.log
    {root}/{env}/objects/{d[:2]}/{digest}{ext}                content-addressed files (stored once)

A run is complete exactly when its manifest says so, and that manifest is the last thing written:
a crash at any point leaves a run readers ignore. Committed runs are never written again.

Reads verify: every name read from the store (run ids, entity index names, digests) is checked before it
becomes a path, and materialising an entity checks the index against the manifest's digest and each file
against the index, so a tampered or torn run is an IntegrityError naming the file, never served.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cvpipe.cache import cache_path
from cvpipe.store.digests import ChangedWhileReading, DigestCache, FileStats
from cvpipe.store.hashing import CHUNK, list_files, tree_digest
from cvpipe.store.paths import (
    DIGEST_RE,
    InvalidRunId,
    safe_relpath,
    validate_digest,
    validate_name,
    validate_run_id,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATUS_RUNNING, STATUS_COMPLETE, STATUS_FAILED = "running", "complete", "failed"
# A "running" run whose process is gone (kill -9, power loss) is shown as interrupted.
STATUS_INTERRUPTED = "interrupted"


class IntegrityError(ValueError):
    """What the store holds does not match what its manifest promises (tampered, torn or truncated)."""


def no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _copy_stream(src: _Readable, dst: IO[bytes]) -> None:
    """Chunked copy (the one place local store writes move bytes; tests make it fail like a full disk)."""
    while chunk := src.read(CHUNK):
        dst.write(chunk)


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by time, unique: UTC timestamp with milliseconds plus a random suffix."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:6]}"


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def default_cache_dir() -> Path:
    return cache_path("entities")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    step: str
    manifest: dict[str, Any]

    @property
    def status(self) -> str:
        status = self.manifest.get("status", "?")
        if status == STATUS_RUNNING and self.manifest.get("host") == socket.gethostname():
            pid = self.manifest.get("pid")
            if isinstance(pid, int) and not _pid_alive(pid):
                return STATUS_INTERRUPTED
        return status

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    def output(self, entity: str) -> dict[str, Any]:
        outs = self.manifest.get("outputs", {})
        if entity not in outs:
            raise KeyError(f"run {self.run_id} of {self.step} has no output {entity!r} (it has {sorted(outs)})")
        return outs[entity]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class StoredFiles:
    """Files of a content-addressed entity that are already objects of a local store, read through rather than
    assembled into a folder: {relative path: digest} and their total size, below the store's object folder
    `root`. A step that passes such files on (data_prep keeps most of data_load's images) has them committed as
    an index, with no file linked, listed or hashed again."""

    root: str
    digests: dict[str, str]
    nbytes: int  # their total size (a stored object counted once per name), as recorded when they were committed
    checked: bool = False  # names and digests checked (read from a verified index): not checked again on commit
    source: str = "stored files"  # what they are, for messages ("images of data_load run ...")

    def path(self, rel: str) -> str:
        """The object file of one of these files (KeyError for another name)."""
        digest = self.digests[rel]
        return f"{self.root}/{digest[:2]}/{digest}{_suffix(rel)}"

    def stats(self, names: list[str]) -> FileStats:
        """The object files' stats (IntegrityError naming the first one that is missing)."""
        try:
            return FileStats.of([self.path(rel) for rel in names])
        except FileNotFoundError as e:
            raise self.missing(e.filename) from None

    def missing(self, path: str) -> IntegrityError:
        return IntegrityError(f"{self.source}: an object is missing from the store ({path})")

    def subset(self, names: Iterable[str]) -> StoredFiles:
        keep = dict.fromkeys(names)
        if len(keep) == len(self.digests) and self.digests.keys() == keep.keys():
            return self  # every file (a version that keeps all its images): no copy of 10^5 entries
        if unknown := [n for n in keep if n not in self.digests]:
            raise ValueError(f"{unknown[0]} is not one of these files ({len(unknown)} unknown)")
        # the size of the smaller side is measured (data_prep dropping a few of 10^5 images stats a few)
        dropped = [n for n in self.digests if n not in keep]
        nbytes = _total(self.stats(list(keep))) if len(keep) <= len(dropped) else \
            self.nbytes - _total(self.stats(dropped))
        return StoredFiles(self.root, {n: self.digests[n] for n in keep}, nbytes, self.checked, self.source)


def _total(stats: FileStats) -> int:
    return int(stats.size.sum())


class ArtifactStore:
    """All reads and writes of pipeline artifacts go through here (same code for every fsspec backend)."""

    def __init__(self, url: str, env: str = "dev", pipeline: str = "default", cache_dir: Path | None = None,
                 storage_options: dict | None = None):
        self.url = str(url)
        self.env = validate_name(env, "env")
        self.pipeline = validate_name(pipeline, "pipeline")
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.cache_dir = cache_dir or default_cache_dir()
        # content-addressed entities this instance committed, as the object views they are ({(step, run, entity):
        # (record digest, view)}): the next step of the same invocation reads them without a stat per object
        self._committed: dict[tuple[str, str, str], tuple[str, StoredFiles]] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> ArtifactStore:
        return cls(cfg.store, env=cfg.env, pipeline=cfg.pipeline)

    # ---- paths (every name checked before it is joined) ---------------------------------------
    def _join(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def pipeline_path(self) -> str:
        return self._join(self.env, self.pipeline)

    def run_path(self, step: str, run_id: str) -> str:
        return self._join(self.env, self.pipeline, validate_name(step, "step name"), validate_run_id(run_id))

    def entity_path(self, step: str, run_id: str, entity: str) -> str:
        return f"{self.run_path(step, run_id)}/{validate_name(entity, 'entity name')}"

    def index_path(self, step: str, run_id: str, entity: str) -> str:
        return f"{self.run_path(step, run_id)}/_index/{validate_name(entity, 'entity name')}.json"

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def object_path(self, digest: str, suffix: str = "") -> str:
        validate_digest(digest)
        if suffix and not (suffix.startswith(".") and validate_name(suffix[1:], "file suffix")):
            raise ValueError(f"invalid object suffix {suffix!r}")
        return self._join(self.env, "objects", digest[:2], digest + suffix)

    def _object_path_of(self, digest: str, rel: str) -> str:
        """object_path for a digest this store computed (a sha256 hexdigest) and a file's name: the same path
        without a Path and a name check per file (10^5 files)."""
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"invalid digest {digest[:80]!r}")
        return f"{self._objects_root}/{digest[:2]}/{digest}{_suffix(rel)}"

    @functools.cached_property
    def _objects_root(self) -> str:
        return self._join(self.env, "objects")

    # ---- low-level writes (atomic per file, no debris on failure) ---------------------------------
    def _atomic_local(self, path: str, write: Callable[[IO[bytes]], object], durable: bool = True) -> None:
        """Write through a temp file beside `path`, then rename; on any error the temp file is removed.
        `durable`: fsync before the rename (else the caller syncs a whole batch at once, see commit_entity)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise

    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            self._atomic_local(path, lambda f: f.write(data))
        else:
            self.fs.pipe_file(path, data)  # object stores make a put visible whole or not at all

    def _put_file(self, local: Path, path: str) -> None:
        if self.is_local:
            with open(local, "rb") as src:
                self._atomic_local(path, lambda f: _copy_stream(src, f))
        else:
            self.fs.put_file(str(local), path)

    def write_json(self, path: str, obj: Any, indent: int | None = 2) -> None:
        """`indent=None` for what only code reads: json's C encoder serves only unindented output (an entity
        index of 10^5 files went through the pure-Python one)."""
        self._write_bytes(path, json.dumps(obj, indent=indent, sort_keys=False, default=str).encode())

    def _write_index(self, step: str, run_id: str, entity: str, files: dict[str, str], digest: str) -> None:
        """{"files": {relative path: sha256}}; a content-addressed file's object is named by its digest and
        suffix (`object_path`), so the index does not spell it out (half of its bytes at 10^5 files). An index
        this instance committed with the same digest is linked, not written again: data_prep keeping all of
        data_load's images would write the same 10 MB."""
        path = self.index_path(step, run_id, entity)
        same = [self.index_path(*key) for key, (d, _) in self._committed.items() if d == digest]
        if same and self.is_local:
            with suppress(OSError):  # gone, or links not supported: written below
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.link(same[0], path)
                return
        self.write_json(path, {"files": files}, indent=None)

    def read_json(self, path: str) -> Any:
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read())

    # ---- runs ---------------------------------------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        path = self.run_path(manifest["step"], manifest["run_id"]) + "/" + MANIFEST
        if self.fs.exists(path):
            current = self.read_json(path)
            if current.get("status") in (STATUS_COMPLETE, STATUS_FAILED):
                raise RuntimeError(f"run {manifest['run_id']} is already committed; committed runs are immutable")
        self.write_json(path, manifest)

    def steps(self) -> list[str]:
        base = self.pipeline_path
        if not self.fs.exists(base):
            return []
        names = (PurePosixPath(p).name for p in self.fs.ls(base, detail=False) if self.fs.isdir(p))
        return sorted(n for n in names if n != "objects" and _is_name(n))

    def _read_record(self, step: str, mpath: str) -> RunRecord | None:
        """The run whose manifest is at `mpath`, or None (logged) when it is unreadable or names another run."""
        dir_name = PurePosixPath(mpath).parent.name
        try:
            manifest = self.read_json(mpath)
        except (OSError, ValueError) as e:  # a torn manifest never counts as a run
            log.warning("skipping unreadable manifest %s: %s", mpath, e)
            return None
        if not isinstance(manifest, dict) or manifest.get("run_id") != dir_name or not _is_run_id(dir_name):
            log.warning("skipping manifest %s: its run_id does not match its folder", mpath)
            return None
        return RunRecord(dir_name, step, manifest)

    def list_runs(self, step: str | None = None) -> list[RunRecord]:
        """Runs with a readable manifest, oldest first (run ids sort by time)."""
        records = []
        for s in [step] if step else self.steps():
            for mpath in self.fs.glob(self.pipeline_path + f"/{validate_name(s, 'step name')}/*/" + MANIFEST):
                rec = self._read_record(s, mpath)
                if rec is not None:
                    records.append(rec)
        return sorted(records, key=lambda r: r.run_id)

    def latest_run(self, step: str, exclude: Iterable[str] = ()) -> RunRecord | None:
        """The latest complete run of a step, or None."""
        skip = set(exclude)
        done = [r for r in self.list_runs(step) if r.complete and r.run_id not in skip]
        return done[-1] if done else None

    def get_run(self, run_id: str, step: str | None = None) -> RunRecord:
        """The run with this id (InvalidRunId, a ValueError and KeyError, for a malformed id)."""
        validate_run_id(run_id)
        for s in [step] if step else self.steps():
            path = self.run_path(s, run_id) + "/" + MANIFEST
            if self.fs.exists(path):
                rec = self._read_record(s, path)
                if rec is None:
                    raise IntegrityError(f"the manifest of run {run_id} ({path}) is unreadable or names another run")
                return rec
        where = f"step {step!r} of " if step else ""
        raise KeyError(f"no run {run_id!r} in {where}{self.uri(self.pipeline_path)}")

    def find_cached(self, step: str, cache_key: str) -> RunRecord | None:
        hits = [r for r in self.list_runs(step) if r.complete and r.manifest.get("cache_key") == cache_key]
        return hits[-1] if hits else None

    # ---- entities -------------------------------------------------------------------------------
    def commit_entity(self, step: str, run_id: str, entity: str, local_dir: Path,
                      content_addressed: bool = False) -> dict[str, Any]:
        """Upload one output directory; returns its record (uri, digest, file count, bytes).

        File digests come from the digest cache (a file linked from data already read is not read again);
        a content-addressed file whose object is already stored is neither read nor copied."""
        base = self.entity_path(step, run_id, entity)
        put = self._put_files(local_dir, None if content_addressed else base)
        files = {rel: digest for rel, (digest, _, _) in put.items()}
        size = sum(nbytes for _, nbytes, _ in put.values())
        digest = tree_digest(files)
        self._write_index(step, run_id, entity, files, digest)
        if content_addressed and self.is_local:
            self._remember(step, run_id, entity, digest, files, size)
        return {"uri": self.uri(base), "digest": digest, "files": len(files), "bytes": size,
                "content_addressed": content_addressed}

    def commit_stored(self, step: str, run_id: str, entity: str, stored: StoredFiles,
                      added: Path | None = None) -> dict[str, Any]:
        """Record a content-addressed entity whose files are objects of this (local) store already, as
        `object_view` handed them out: its index only. `added`: a folder of further files (flat), stored as
        objects first (a version's new images)."""
        if not self.is_local:
            raise ValueError(f"{entity}: stored files are objects of a local store; this one is {self.url}")
        if stored.root != self._objects_root:
            raise ValueError(f"{entity}: {stored.root!r} is not the object folder of this store")
        if not stored.checked:
            check_index(stored.digests, f"the files of {entity}")
        files, nbytes = dict(stored.digests), stored.nbytes
        if added is not None:
            for rel, (digest, size, _) in self._put_files(added).items():
                nbytes += size - (_total(stored.stats([rel])) if rel in files else 0)  # a file replaced
                files[rel] = digest
        digest = tree_digest(files)
        self._write_index(step, run_id, entity, files, digest)
        self._remember(step, run_id, entity, digest, files, nbytes)
        return {"uri": self.uri(self.entity_path(step, run_id, entity)), "digest": digest,
                "files": len(files), "bytes": nbytes, "content_addressed": True}

    def _remember(self, step: str, run_id: str, entity: str, digest: str, files: dict[str, str],
                  nbytes: int) -> None:
        """Keep a committed entity's view: every object of it is there (checked or stored by this commit)."""
        source = f"{entity} of {step} run {run_id}"
        self._committed[(step, run_id, entity)] = (digest, StoredFiles(self._objects_root, files, nbytes, True, source))

    def _put_files(self, folder: Path, base: str | None = None) -> dict[str, tuple[str, int, str]]:
        """Store every file below `folder`: as an object (`base` None) or under `base`. {relative path:
        (digest, bytes, where it went)}; new objects are synced before any index (and so manifest) names them."""
        names = [safe_relpath(rel, "output file name") for rel in list_files(folder)]
        out: dict[str, tuple[str, int, str]] = {}
        written: list[str] = []
        with DigestCache() as cache:
            paths = [os.path.join(folder, rel) for rel in names]  # str: a Path per file cost more
            stats = FileStats.of(paths)
            for rel, path, size, digest in zip(names, paths, stats.size.tolist(), cache.digests(paths, stats=stats)):
                if base is None:
                    where = self._put_object(Path(path), rel, digest, cache, size, written)
                else:
                    where = f"{base}/{rel}"
                    self._put_file(Path(path), where)
                out[rel] = (digest, size, where)
        _sync(written)
        return out

    def _put_object(self, local: Path, rel: str, digest: str, cache: DigestCache, nbytes: int,
                    written: list[str]) -> str:
        """Store one file in the object area under its digest (once: an object already there is shared by
        every entity naming it). A file named by a digest must hold that content. A local object is written
        without its own fsync and appended to `written`: the caller syncs them all at once (an fsync per
        image was most of the first version of 100,000 images on a busy disk)."""
        stem = rel.rsplit("/", 1)[-1].split(".")[0]
        if DIGEST_RE.fullmatch(stem) and stem != digest:
            raise ChangedWhileReading(f"{rel}: its content (sha256 {digest[:12]}...) is not the content it was "
                                      f"named by: the source file changed while the step read it; run again")
        obj = self._object_path_of(digest, rel)
        if self.is_local and _stored_size(obj) == nbytes:  # a torn copy (a crash before its sync) is written again
            return obj
        if not self.is_local and self.fs.exists(obj):
            return obj
        if self.is_local:
            self._put_local_checked(local, obj, digest, rel)
            written.append(obj)
            cache.record(os.stat(obj), digest, settled=True)  # the store never writes an object again
        else:
            self._put_file(local, obj)
        return obj

    def _put_local_checked(self, local: Path, path: str, digest: str, rel: str) -> None:
        """Copy into the local store, hashing what is written; bytes that are not `digest` are refused before
        they take the object's name (an object is trusted by its name from then on)."""
        h = hashlib.sha256()

        def write(f: IO[bytes]) -> None:
            with open(local, "rb") as src:
                _copy_stream(_Hashing(src, h), f)
            if (got := h.hexdigest()) != digest:
                raise ChangedWhileReading(f"{rel} changed while it was stored (sha256 {got[:12]}... != "
                                          f"{digest[:12]}...); run again once the data stops changing")

        self._atomic_local(path, write, durable=False)

    def put_state(self, step: str, run_id: str, local_dir: Path) -> None:
        """Store a running step's resumable state (replaced file by file; never part of the outputs)."""
        base = self.run_path(step, run_id) + "/_state"
        for rel in list_files(local_dir):
            self._put_file(local_dir / rel, f"{base}/{rel}")

    def find_resumable(self, step: str, cache_key: str) -> RunRecord | None:
        """The newest run that died with the same cache key and left state behind, unless a run with that
        key has completed since (then the work is done and the dead run is history)."""
        for rec in reversed(self.list_runs(step)):
            if rec.manifest.get("cache_key") != cache_key:
                continue
            if rec.complete:
                return None
            if rec.status in (STATUS_FAILED, STATUS_INTERRUPTED) and \
                    self.fs.exists(self.run_path(step, rec.run_id) + "/_state"):
                return rec
        return None

    def get_state(self, rec: RunRecord, local_dir: Path) -> Path:
        base = self.run_path(rec.step, rec.run_id) + "/_state"
        for remote in self.fs.find(base):
            rel = safe_relpath(PurePosixPath(remote).relative_to(PurePosixPath(base)).as_posix(), "state file name")
            (local_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local_dir / rel))
        return local_dir

    def put_log(self, step: str, run_id: str, local_log: Path) -> str:
        path = self.run_path(step, run_id) + "/logs/step.log"
        self._put_file(local_log, path)
        return self.uri(path)

    # ---- reads that verify ----------------------------------------------------------------------
    def entity_files(self, rec: RunRecord, entity: str) -> dict[str, str]:
        """The entity's {relative path: sha256} index, checked: every name safe, every digest well-formed,
        and the whole index hashing to the digest the manifest records. IntegrityError otherwise."""
        where = f"{entity} of {rec.step} run {rec.run_id}"
        out = rec.output(entity)
        try:
            expected = validate_digest(out.get("digest"), f"manifest digest of {where}")
            index = self.read_json(self.index_path(rec.step, rec.run_id, entity))
            files = index.get("files") if isinstance(index, dict) else None
            if not isinstance(files, dict):
                raise ValueError(f"the file index of {where} has no 'files' table")
            check_index(files, f"the index of {where}")
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{where}: {e}") from None
        if tree_digest(files) != expected:
            raise IntegrityError(f"{where}: the file index does not hash to the manifest's digest {expected[:12]}... "
                                 f"(the manifest or the index was changed after the run was committed)")
        return files

    def materialize(self, rec: RunRecord, entity: str, verify: bool = True) -> Path:
        """A local, read-only directory with the entity's files, each checked against the run's manifest.

        Plain entities of a local store are used in place; everything else is assembled once per
        content digest in the cache (content-addressed files are linked, not copied, when local).
        Verification streams every file through sha256 (cheap next to any step that reads them); a
        mismatch, a missing or an extra file is an IntegrityError naming the file.
        """
        out = rec.output(entity)
        files = self.entity_files(rec, entity)
        where = f"{entity} of {rec.step} run {rec.run_id}"
        if self.is_local and not out.get("content_addressed"):
            local = Path(self.entity_path(rec.step, rec.run_id, entity))
            if verify:
                verify_directory(local, files, where)
            return local
        local = self.cache_dir / out["digest"]  # checked by entity_files: 64 hex characters
        if not local.is_dir():
            self._assemble(rec, entity, files, local)
        elif verify:
            try:
                verify_directory(local, files, where)
                return local
            except IntegrityError as e:  # the cache is disposable: a stale entry (links into a store that
                log.info("rebuilding cached %s: %s", where, e)  # moved, a partial copy) is built afresh
                self._discard(local)
                self._assemble(rec, entity, files, local)
        if verify:
            verify_directory(local, files, where)
        return local

    def object_view(self, rec: RunRecord, entity: str, verify: bool = True) -> StoredFiles | None:
        """A content-addressed entity of a local store read through its objects, checked like `materialize`
        checks a folder (the index against the manifest, each object against its digest through the digest
        cache; --rehash reads them all), with no folder of links built. None for other entities and stores.
        `verify=False`: the objects are only checked to exist (a listing of their folders, `_check_present`),
        their total size is the manifest's record; `verify_objects` checks the contents of those that are read,
        when they are read (an index passed on to a new version reads none of them)."""
        if not self.is_local or not rec.output(entity).get("content_addressed"):
            return None
        committed = self._committed.get((rec.step, rec.run_id, entity))
        if not verify and committed is not None and committed[0] == rec.output(entity).get("digest"):
            return committed[1]  # committed by this instance moments ago: its objects are there
        files = self.entity_files(rec, entity)
        source = f"{entity} of {rec.step} run {rec.run_id}"
        recorded = rec.output(entity).get("bytes")
        nbytes = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0 else None
        view = StoredFiles(self._objects_root, files, nbytes or 0, checked=True, source=source)
        if nbytes is not None and not verify:  # a record that is not a size is measured below
            _check_present(view)
            return view
        names = list(files)
        stats = view.stats(names)
        if verify:
            self._check_objects(view, names, stats)
        return replace(view, nbytes=_total(stats))

    def verify_objects(self, view: StoredFiles, names: list[str]) -> None:
        """Check that these objects of a view hold what its index says (IntegrityError otherwise): through the
        digest cache, as `object_view` does."""
        self._check_objects(view, names, view.stats(names))

    @staticmethod
    def _check_objects(view: StoredFiles, names: list[str], stats: FileStats) -> None:
        with DigestCache() as cache:
            known = cache.known_many(stats)
            misses = [i for i, d in enumerate(known) if d is None]  # changed or never recorded: read them
            hashed = dict(zip(misses, cache.digests([view.path(names[i]) for i in misses])))
        for i, rel in enumerate(names):
            digest, recorded = known[i] or hashed[i], view.digests[rel]
            if digest != recorded:
                raise IntegrityError(f"{view.source}: {rel} was changed after the run was committed (sha256 "
                                     f"{digest[:12]}... != {recorded[:12]}... recorded); refusing to use it")

    def _discard(self, cached: Path) -> None:
        aside = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".tmp-stale-"))
        with suppress(OSError):
            os.replace(cached, aside / "old")
        shutil.rmtree(aside, ignore_errors=True)

    def _assemble(self, rec: RunRecord, entity: str, files: dict[str, str], target: Path) -> None:
        """Build the entity in a temp folder of the cache, then rename it into place (removed on failure)."""
        content_addressed = bool(rec.output(entity).get("content_addressed"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".tmp-"))
        folders: set[str] = set()
        objects = self._objects_root
        try:
            for rel, digest in files.items():
                dest = os.path.join(tmp, rel)  # str, one mkdir per folder: 10^5 files
                if (folder := os.path.dirname(dest)) not in folders:
                    os.makedirs(folder, exist_ok=True)
                    folders.add(folder)
                if content_addressed:
                    # object_path without its checks per file: entity_files checked every digest and name
                    src = f"{objects}/{digest[:2]}/{digest}{_suffix(rel)}"
                    if self.is_local:
                        os.symlink(src, dest)
                        continue
                else:
                    src = f"{self.entity_path(rec.step, rec.run_id, entity)}/{rel}"
                with self.fs.open(src, "rb") as f_in, open(dest, "wb") as f_out:
                    _copy_stream(f_in, f_out)
            try:
                os.replace(tmp, target)
            except OSError:  # another process materialised it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def verify_run(self, rec: RunRecord) -> list[dict[str, str]]:
        """Every problem of one run's outputs: [{"entity", "problem"}] (empty when all files match)."""
        problems = []
        for entity in sorted(rec.manifest.get("outputs") or {}):
            try:
                files = self.entity_files(rec, entity)
                if self.is_local and not rec.output(entity).get("content_addressed"):
                    verify_directory(Path(self.entity_path(rec.step, rec.run_id, entity)), files, entity,
                                     rehash=True)
                else:
                    self._verify_remote(rec, entity, files)
            except (IntegrityError, ValueError, OSError) as e:
                problems.append({"entity": entity, "problem": str(e)})
        return problems

    def _verify_remote(self, rec: RunRecord, entity: str, files: dict[str, str]) -> None:
        """Hash each stored file (object or entity file) in the store itself, streaming."""
        content_addressed = bool(rec.output(entity).get("content_addressed"))
        for rel, digest in files.items():
            src = self.object_path(digest, _suffix(rel)) if content_addressed else \
                f"{self.entity_path(rec.step, rec.run_id, entity)}/{rel}"
            try:
                with self.fs.open(src, "rb") as f:
                    got = _stream_digest(f)
            except FileNotFoundError:
                raise IntegrityError(f"{entity}/{rel}: missing from the store ({self.uri(src)})") from None
            if got != digest:
                raise IntegrityError(f"{entity}/{rel}: sha256 {got[:12]}... does not match the index "
                                     f"{digest[:12]}... ({self.uri(src)})")


class _Hashing:
    """A reader that hashes what is read through it."""

    def __init__(self, src: IO[bytes], h: Any):
        self.src, self.h = src, h

    def read(self, n: int = -1, /) -> bytes:
        chunk = self.src.read(n)
        self.h.update(chunk)
        return chunk


def _stream_digest(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def verify_directory(local: Path, files: dict[str, str], where: str, rehash: bool | None = None) -> None:
    """Check that `local` holds exactly `files` ({relative path: sha256}); IntegrityError names the first
    file that is missing, extra or different. Digests come from the digest cache (a file whose inode, size
    and mtime are as when it was read is not read again) unless `rehash` (default: --rehash) asks to read all."""
    present = set(list_files(local)) if local.is_dir() else set()
    missing = sorted(set(files) - present)
    if missing:
        raise IntegrityError(f"{where}: {missing[0]} is missing ({len(missing)} file(s) missing in {local})")
    extra = sorted(present - set(files))
    if extra:
        raise IntegrityError(f"{where}: {extra[0]} is not in the run's index ({len(extra)} unexpected file(s) "
                             f"in {local})")
    names = list(files)
    with DigestCache(rehash=rehash) as cache:
        got_all = cache.digests([os.path.join(local, rel) for rel in names])
    for rel, got in zip(names, got_all):
        digest = files[rel]
        if got != digest:
            raise IntegrityError(f"{where}: {rel} was changed after the run was committed (sha256 {got[:12]}... "
                                 f"!= {digest[:12]}... recorded); refusing to use it")


def _stored_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _sync(paths: list[str]) -> None:
    """Make the files written without fsync durable: one syncfs(2) of their file system where Linux has it,
    else an fsync each."""
    if not paths:
        return
    fd = os.open(paths[0], os.O_RDONLY)
    try:
        if _syncfs is not None and _syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


# Below this many files an object view stats each object; from it, it lists the object folders it touches
# (one listing of 10^5 names costs a tenth of 10^5 stats; a few files of a large store are cheaper stat'ed).
LISTED_FROM = 2048


def _check_present(view: StoredFiles) -> None:
    """Every object of the view exists (IntegrityError naming a missing one): its contents are checked when read."""
    if len(view.digests) < LISTED_FROM:
        view.stats(list(view.digests))
        return
    wanted: dict[str, set[str]] = {}
    for rel, digest in view.digests.items():
        wanted.setdefault(digest[:2], set()).add(digest + _suffix(rel))
    for folder, names in wanted.items():
        try:
            missing = names.difference(os.listdir(f"{view.root}/{folder}"))
        except FileNotFoundError:
            missing = names
        if missing:
            raise view.missing(f"{view.root}/{folder}/{min(missing)}")


@functools.lru_cache(maxsize=256)
def _suffix_of(suffix: str) -> str:
    return suffix if _is_name(suffix[1:]) else ""


def _suffix(rel: str) -> str:
    """An object's suffix: the file's lower-case extension when it is a valid name (checked once per extension).
    A name's dot only (not a folder's), not its first character nor its last."""
    dot = rel.rfind(".")
    if dot == len(rel) - 1 or dot <= rel.rfind("/") + 1:
        return ""
    return _suffix_of(rel[dot:].lower())


_PLAIN_NAMES = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}(?:\n[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254})*")
_HEX = re.compile(r"[0-9a-f]*")


def check_index(files: dict[str, str], where: str) -> None:
    """Every name in an entity index a safe relative path and every digest a sha256 (ValueError naming the
    first that is not). Plain names and digests are checked in bulk, by one regex over them all (10^5 entries
    per version); anything else, name by name."""
    names, digests = list(files), list(files.values())
    if not (all(isinstance(n, str) for n in names) and (joined := "\n".join(names)).count("\n") == len(names) - 1
            and _PLAIN_NAMES.fullmatch(joined)):
        for rel in names:
            safe_relpath(rel, f"file name in {where}")
    if not (all(isinstance(d, str) for d in digests) and set(map(len, digests)) <= {64}
            and _HEX.fullmatch("".join(digests))):
        for rel, digest in files.items():
            validate_digest(digest, f"digest of {rel} in {where}")


def _is_name(name: str) -> bool:
    try:
        validate_name(name)
        return True
    except ValueError:
        return False


def _is_run_id(run_id: str) -> bool:
    try:
        validate_run_id(run_id)
        return True
    except InvalidRunId:
        return False
