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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cvpipe.store.hashing import file_digest, list_files, tree_digest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATUS_RUNNING, STATUS_COMPLETE, STATUS_FAILED = "running", "complete", "failed"
# A "running" run whose process is gone (kill -9, power loss) is shown as interrupted.
STATUS_INTERRUPTED = "interrupted"


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by time, unique: UTC timestamp with milliseconds plus a random suffix."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:6]}"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CVPIPE_CACHE", Path.home() / ".cache" / "cvpipe")) / "entities"


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


class ArtifactStore:
    """All reads and writes of pipeline artifacts go through here (same code for every fsspec backend)."""

    def __init__(self, url: str, env: str = "dev", pipeline: str = "default", cache_dir: Path | None = None,
                 storage_options: dict | None = None):
        self.url = str(url)
        self.env = env
        self.pipeline = pipeline
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.cache_dir = cache_dir or default_cache_dir()

    @classmethod
    def from_config(cls, cfg: Any) -> ArtifactStore:
        return cls(cfg.store, env=cfg.env, pipeline=cfg.pipeline)

    # ---- paths ------------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def pipeline_path(self) -> str:
        return self._join(self.env, self.pipeline)

    def run_path(self, step: str, run_id: str) -> str:
        return self._join(self.env, self.pipeline, step, run_id)

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def object_path(self, digest: str, suffix: str = "") -> str:
        return self._join(self.env, "objects", digest[:2], digest + suffix)

    # ---- low-level writes (atomic per file) -------------------------------------------------------
    def _write_bytes(self, path: str, data: bytes) -> None:
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)  # object stores make a put visible whole or not at all

    def _put_file(self, local: Path, path: str) -> None:
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}"
            self.fs.put_file(str(local), tmp)
            os.replace(tmp, path)
        else:
            self.fs.put_file(str(local), path)

    def write_json(self, path: str, obj: Any) -> None:
        self._write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())

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
        return sorted(PurePosixPath(p).name for p in self.fs.ls(base, detail=False) if self.fs.isdir(p))

    def list_runs(self, step: str | None = None) -> list[RunRecord]:
        """Runs with a manifest, oldest first (run ids sort by time)."""
        records = []
        for s in [step] if step else self.steps():
            for mpath in self.fs.glob(self.run_path(s, "*") + "/" + MANIFEST):
                try:
                    manifest = self.read_json(mpath)
                except (OSError, ValueError) as e:  # a torn manifest never counts as a run
                    log.warning("skipping unreadable manifest %s: %s", mpath, e)
                    continue
                records.append(RunRecord(manifest["run_id"], s, manifest))
        return sorted(records, key=lambda r: r.run_id)

    def latest_run(self, step: str, exclude: Iterable[str] = ()) -> RunRecord | None:
        """The latest complete run of a step, or None."""
        skip = set(exclude)
        done = [r for r in self.list_runs(step) if r.complete and r.run_id not in skip]
        return done[-1] if done else None

    def get_run(self, run_id: str, step: str | None = None) -> RunRecord:
        for s in [step] if step else self.steps():
            path = self.run_path(s, run_id) + "/" + MANIFEST
            if self.fs.exists(path):
                return RunRecord(run_id, s, self.read_json(path))
        where = f"step {step!r} of " if step else ""
        raise KeyError(f"no run {run_id!r} in {where}{self.uri(self.pipeline_path)}")

    def find_cached(self, step: str, cache_key: str) -> RunRecord | None:
        hits = [r for r in self.list_runs(step) if r.complete and r.manifest.get("cache_key") == cache_key]
        return hits[-1] if hits else None

    # ---- entities -------------------------------------------------------------------------------
    def commit_entity(self, step: str, run_id: str, entity: str, local_dir: Path,
                      content_addressed: bool = False) -> dict[str, Any]:
        """Upload one output directory; returns its record (uri, digest, file count, bytes)."""
        run = self.run_path(step, run_id)
        files: dict[str, str] = {}
        objects: dict[str, str] = {}
        size = 0
        for rel in list_files(local_dir):
            local = local_dir / rel
            digest = file_digest(local)
            files[rel] = digest
            size += local.stat().st_size
            if content_addressed:
                obj = self.object_path(digest, PurePosixPath(rel).suffix.lower())
                if not self.fs.exists(obj):
                    self._put_file(local, obj)
                objects[rel] = obj
            else:
                self._put_file(local, f"{run}/{entity}/{rel}")
        index = {"files": files, "objects": {k: self.uri(v) for k, v in objects.items()}}
        self.write_json(f"{run}/_index/{entity}.json", index)
        return {
            "uri": self.uri(f"{run}/{entity}"),
            "digest": tree_digest(files),
            "files": len(files),
            "bytes": size,
            "content_addressed": content_addressed,
        }

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
            rel = PurePosixPath(remote).relative_to(PurePosixPath(base))
            (local_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local_dir / rel))
        return local_dir

    def put_log(self, step: str, run_id: str, local_log: Path) -> str:
        path = self.run_path(step, run_id) + "/logs/step.log"
        self._put_file(local_log, path)
        return self.uri(path)

    def materialize(self, rec: RunRecord, entity: str) -> Path:
        """A local, read-only directory with the entity's files.

        Plain entities of a local store are used in place; everything else is assembled once per
        content digest in the cache (content-addressed files are linked, not copied, when local).
        """
        out = rec.output(entity)
        run = self.run_path(rec.step, rec.run_id)
        if self.is_local and not out.get("content_addressed"):
            return Path(f"{run}/{entity}")
        target = self.cache_dir / out["digest"]
        if target.is_dir():
            return target
        index = self.read_json(f"{run}/_index/{entity}.json")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".tmp-"))
        for rel, digest in index["files"].items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if out.get("content_addressed"):
                src = self.object_path(digest, PurePosixPath(rel).suffix.lower())
                if self.is_local:
                    os.symlink(src, dest)
                    continue
            else:
                src = f"{run}/{entity}/{rel}"
            self.fs.get_file(src, str(dest))
        try:
            os.replace(tmp, target)
        except OSError:  # another process materialised it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return target
