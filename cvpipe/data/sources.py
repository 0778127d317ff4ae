"""Bring raw data to a local directory: a folder, an archive, an http(s) URL or any fsspec URL.

Raw data is never modified: archives and remote data are unpacked into a scratch directory.
Archive entries with absolute paths, `..` or links that lead outside the target are refused.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class UnsafeArchive(ValueError):
    """An archive entry would land outside the extraction directory (zip slip)."""


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or ".." in p.parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive entry {name!r} has an absolute path or '..': refusing to extract (zip slip)")


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract safely into `target`; a single top-level folder is unwrapped."""
    target.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename)
            zf.extractall(target)
    else:
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
            tf.extractall(target, filter="data")
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def _download(url: str, dest: Path) -> Path:
    import httpx
    from rich.progress import Progress

    log.info("downloading %s", url)
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            r.raise_for_status()
            total = int(r.headers.get("content-length") or 0) or None
            with open(dest, "wb") as f, Progress(transient=True, disable=not os.isatty(2)) as bar:
                task = bar.add_task(f"download {dest.name}", total=total)
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                    bar.advance(task, len(chunk))
    except httpx.HTTPError as e:
        raise ConnectionError(f"cannot download {url}: {e}. Download it by hand and set data_load.source "
                              f"to the local file or folder.") from None
    return dest


def fetch_source(source: str, scratch: Path) -> Path:
    """A local directory holding the raw data named by `source`."""
    scratch.mkdir(parents=True, exist_ok=True)
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source not found: {path.resolve()}")
        if path.is_dir():
            return path
        if is_archive(path.name):
            return extract_archive(path, scratch / "extracted")
        raise ValueError(f"data source {path} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    name = PurePosixPath(source.split("?")[0]).name or "download"
    if source.startswith(("http://", "https://")):
        if not is_archive(name):
            raise ValueError(f"an http(s) source must point at an archive ({', '.join(ARCHIVE_SUFFIXES)}): {source}")
        return extract_archive(_download(source, scratch / name), scratch / "extracted")
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"data source not found: {source}")
    if fs.isdir(path):
        local = scratch / "remote"
        files = fs.find(path)
        for f in files:
            rel = PurePosixPath(f).relative_to(PurePosixPath(path.rstrip("/")))
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(local / rel))
        return local
    if is_archive(name):
        fs.get_file(path, str(scratch / name))
        return extract_archive(scratch / name, scratch / "extracted")
    raise ValueError(f"data source {source} is a file but not an archive")
