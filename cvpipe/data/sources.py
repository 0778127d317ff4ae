"""Bring raw data to a local directory: a folder, an archive, an http(s) URL or any fsspec URL; and digest it.

Raw data is never modified: archives and remote data are unpacked into a scratch directory.

- `digest_source` identifies the data by content before data_load runs (the runner keys the step's cache
  on it): a folder by the sha256 of every file in it (each read again only when its inode, size or mtime
  changed: `cvpipe.store.digests`), an archive or a URL by the sha256 of its bytes, an
  object-store prefix by its listing (names, sizes and ETags; content hashes where the store has no ETag).
  A downloaded archive is kept under the digest it was read with, so the step unpacks exactly those bytes.
- Archive entries with absolute paths, `..` or links that lead outside the target are refused, and so is an
  archive over its limits (total bytes, file count, compression ratio; `ArchiveLimits`), before anything
  is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from cvpipe.cache import cache_path
from cvpipe.pipeline.step import SourceDigest
from cvpipe.store.digests import DigestCache
from cvpipe.store.hashing import CHUNK, file_digest, tree_digest
from cvpipe.store.paths import is_inside, safe_relpath

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
GiB = 1 << 30


class UnsafeArchive(ValueError):
    """An archive entry would land outside the extraction directory (zip slip), or the archive is over a limit."""


class ArchiveLimits(BaseModel):
    """Refuse archives (and downloads) that expand beyond what a detection dataset needs."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(64 * GiB, gt=0, description="most bytes an archive may expand to (or a download be)")
    max_files: int = Field(2_000_000, gt=0, description="most entries an archive may hold")
    max_ratio: float = Field(100.0, gt=1, description="most expanded/compressed size, for the archive and each "
                                                       "member over 1 MiB (zip bombs reach 1000:1)")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or ".." in p.parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive entry {name!r} has an absolute path or '..': refusing to extract (zip slip)")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _check_totals(archive: Path, files: int, total: int, limits: ArchiveLimits, target: Path) -> None:
    """The limits, on what the archive's headers announce (extraction counts again as it writes)."""
    packed = max(archive.stat().st_size, 1)
    hint = "raise data_load.archive_limits.{} if you trust this archive"
    if files > limits.max_files:
        raise UnsafeArchive(f"{archive.name}: {files} entries, over the limit of {limits.max_files}; "
                            + hint.format("max_files"))
    if total > limits.max_bytes:
        raise UnsafeArchive(f"{archive.name}: expands to {_mb(total)}, over the limit of {_mb(limits.max_bytes)}; "
                            + hint.format("max_bytes"))
    if total > 1 << 20 and total / packed > limits.max_ratio:
        raise UnsafeArchive(f"{archive.name}: {_mb(packed)} expands to {_mb(total)} (ratio {total / packed:.0f}:1, "
                            f"over {limits.max_ratio:.0f}:1): refusing a likely zip bomb; " + hint.format("max_ratio"))
    free = shutil.disk_usage(target).free
    if total > free:
        raise OSError(28, f"{archive.name} expands to {_mb(total)} but only {_mb(free)} are free in {target}")


def _copy_limited(src: IO[bytes], dst: IO[bytes], budget: int, what: str) -> int:
    """Copy at most `budget` bytes; UnsafeArchive if the stream holds more (a header that lied)."""
    written = 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > budget:
            raise UnsafeArchive(f"{what}: holds more data than its header announced, over the limit: refusing")
        dst.write(chunk)
    return written


def _extract_zip(archive: Path, target: Path, limits: ArchiveLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info.filename)
            if info.file_size > 1 << 20 and info.file_size / max(info.compress_size, 1) > limits.max_ratio:
                raise UnsafeArchive(f"{archive.name}: entry {info.filename!r} expands {info.compress_size} -> "
                                    f"{info.file_size} bytes (over {limits.max_ratio:.0f}:1): refusing a likely "
                                    f"zip bomb; raise data_load.archive_limits.max_ratio if you trust it")
        _check_totals(archive, len(infos), sum(i.file_size for i in infos), limits, target)
        budget = limits.max_bytes
        for info in infos:
            dest = target / info.filename.replace("\\", "/")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                budget -= _copy_limited(src, dst, min(budget, info.file_size), f"{archive.name}: {info.filename}")


def _extract_tar(archive: Path, target: Path, limits: ArchiveLimits) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_member(m.name)
            if m.issym() or m.islnk():
                link = PurePosixPath(m.name).parent / m.linkname if m.issym() else PurePosixPath(m.linkname)
                _check_member(str(link))
                if os.path.normpath(str(link)).startswith(".."):
                    raise UnsafeArchive(f"archive link {m.name!r} -> {m.linkname!r} points outside: refusing")
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchive(f"archive entry {m.name!r} is a device or fifo: refusing")
        _check_totals(archive, len(members), sum(m.size for m in members if m.isfile()), limits, target)
        tf.extractall(target, filter="data")  # tar sizes are exact: the totals above bound what is written


def extract_archive(archive: Path, target: Path, limits: ArchiveLimits | None = None) -> Path:
    """Extract safely into `target` within `limits`; a single top-level folder is unwrapped. On any error
    the partly extracted files are removed."""
    limits = limits or ArchiveLimits()
    target.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, target, limits)
        else:
            _extract_tar(archive, target, limits)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        shutil.rmtree(target, ignore_errors=True)
        raise ValueError(f"{archive.name}: not a readable archive (truncated or corrupt?): {e}") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


# ---- digests ----------------------------------------------------------------------------------------
def downloads_dir() -> Path:
    return cache_path("downloads")


def folder_files(root: Path) -> list[str]:
    """Relative paths of the regular files below `root` that stay inside it (symlinks leading out are left
    out: they are never read), sorted. Only symlinks need their target resolved: a plain file or folder met
    while walking down from `root` without following a link is inside it."""
    out: list[str] = []
    stack = [(str(root), "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as entries:
            for e in entries:
                name = f"{rel}{e.name}"
                if e.is_symlink() and not is_inside(root, Path(e.path)):
                    continue
                if e.is_dir():
                    if not e.is_symlink():  # a linked folder inside root is walked where it really lies
                        stack.append((e.path, f"{name}/"))
                elif e.is_file():
                    out.append(name)
    return sorted(out)


def _digest_folder(path: Path) -> SourceDigest:
    """Every file's sha256, read only for files whose (inode, size, mtime) changed since they were last read
    (cvpipe.store.digests; `--rehash` reads them all)."""
    names = folder_files(path)
    with DigestCache() as cache:
        try:
            digests = cache.digests([f"{path}/{rel}" for rel in names])  # str: 10^5 Paths cost seconds
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e.filename} was removed while the data source was being read: run again "
                                    f"once the data stops changing") from None
        log.info("source %s: %d files, %d read (the rest unchanged since last read)", path, len(names), cache.hashed)
    files = dict(zip(names, digests))
    return SourceDigest(str(path.resolve()), tree_digest(files), len(files), local=path, file_digests=files)


def _download(url: str, limits: ArchiveLimits) -> SourceDigest:
    """Stream the URL to the download cache, hashing as it comes; kept as <sha256><suffix>."""
    import httpx

    suffix = next((s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True)
                   if PurePosixPath(url.split("?")[0]).name.lower().endswith(s)), "")
    cache = downloads_dir()
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
    log.info("downloading %s", url)
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as f, httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes(CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise UnsafeArchive(f"{url}: more than {_mb(limits.max_bytes)}; raise "
                                        f"data_load.archive_limits.max_bytes if you trust it")
                h.update(chunk)
                f.write(chunk)
        digest = h.hexdigest()
        local = cache / f"{digest}{suffix}"
        os.replace(tmp, local)
    except httpx.HTTPError as e:
        raise ConnectionError(f"cannot download {url}: {e}. Download it by hand and set data_load.source "
                              f"to the local file or folder.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return SourceDigest(url, digest, 1, local=local)


def _listing_entry(fs, path: str, info: dict) -> str:
    """An object's identity: its ETag (or the store's checksum) and size; its content hash when it has neither."""
    for key in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(key):
            return f"{key}={str(info[key]).strip(chr(34))} size={info.get('size')}"
    with fs.open(path, "rb") as f:
        h = hashlib.sha256()
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"sha256={h.hexdigest()}"


def _digest_remote(source: str) -> SourceDigest:
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"data source not found: {source}")
    base = PurePosixPath(path.rstrip("/"))
    if not fs.isdir(path):
        return SourceDigest(source, hashlib.sha256(_listing_entry(fs, path, fs.info(path)).encode()).hexdigest(), 1)
    listing = {}
    for name, info in fs.find(path, detail=True).items():
        rel = PurePosixPath(name).relative_to(base).as_posix()
        listing[safe_relpath(rel, "object name")] = _listing_entry(fs, name, info)
    return SourceDigest(source, tree_digest(listing), len(listing))


def digest_source(source: str, limits: ArchiveLimits | None = None) -> SourceDigest:
    """The content digest of the raw data `source` names (see the module doc)."""
    limits = limits or ArchiveLimits()
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source not found: {path.resolve()}")
        if path.is_dir():
            return _digest_folder(path)
        if not is_archive(path.name):
            raise ValueError(f"data source {path} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        return SourceDigest(str(path.resolve()), file_digest(path), 1, local=path)
    if source.startswith(("http://", "https://")):
        if not is_archive(PurePosixPath(source.split("?")[0]).name):
            raise ValueError(f"an http(s) source must point at an archive ({', '.join(ARCHIVE_SUFFIXES)}): {source}")
        return _download(source, limits)
    return _digest_remote(source)


# ---- fetching ---------------------------------------------------------------------------------------
def _fetch_remote(source: str, scratch: Path, limits: ArchiveLimits) -> Path:
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"data source not found: {source}")
    name = PurePosixPath(path.rstrip("/")).name or "download"
    if fs.isdir(path):
        local = scratch / "remote"
        base = PurePosixPath(path.rstrip("/"))
        for f in fs.find(path):
            rel = safe_relpath(PurePosixPath(f).relative_to(base).as_posix(), "object name")
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(local / rel))
        return local
    if is_archive(name):
        fs.get_file(path, str(scratch / name))
        return extract_archive(scratch / name, scratch / "extracted", limits)
    raise ValueError(f"data source {source} is a file but not an archive")


def fetch_source(source: str, scratch: Path, limits: ArchiveLimits | None = None,
                 digested: SourceDigest | None = None) -> Path:
    """A local directory holding the raw data named by `source`. `digested` (from `digest_source`) is reused:
    a downloaded archive is unpacked from the very bytes that were digested."""
    limits = limits or ArchiveLimits()
    scratch.mkdir(parents=True, exist_ok=True)
    if digested is None and source.startswith(("http://", "https://")):
        digested = digest_source(source, limits)
    if digested is not None and digested.local is not None:
        local = digested.local
        return local if local.is_dir() else extract_archive(local, scratch / "extracted", limits)
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source not found: {path.resolve()}")
        if path.is_dir():
            return path
        if is_archive(path.name):
            return extract_archive(path, scratch / "extracted", limits)
        raise ValueError(f"data source {path} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    return _fetch_remote(source, scratch, limits)
