"""Per-file content digests, cached by file identity and stat, so an unchanged file is never read twice.

A file's sha256 is recorded under its identity (device, inode) with the size and modification time (ns) it
had when it was read. The next time, a file whose identity, size and mtime are unchanged gets the recorded
digest without a read; anything else is hashed again (like git's index). Keying by inode rather than path
lets a hard link (a source image linked into a step's staging folder) reuse the digest of its original.

What this cannot see: a content edit that keeps the size and the mtime (a tool that restores mtimes, or an
inode reused for a same-size file given the same mtime). `--rehash` (`CVPIPE_REHASH=1`) ignores the cache and
reads every file; `cvpipe verify` always does. A file modified less than `RACY_NS` before it was hashed is
not trusted next time (its mtime may not move when it is written again within the timestamp's granularity).

Facts about content (an image's header size, its full decode) are cached under the content digest and a
`kind` that names what was computed and its version: a fact of a digest never goes stale.

The cache is one SQLite file, `$CVPIPE_CACHE/digests.sqlite`: local, disposable, safe to delete.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cvpipe.cache import cache_path
from cvpipe.store import hashing

log = logging.getLogger(__name__)

REHASH_ENV = "CVPIPE_REHASH"
RACY_NS = 1_000_000_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, digest TEXT,
                                  hashed_at INTEGER, PRIMARY KEY (dev, ino));
CREATE TABLE IF NOT EXISTS facts (digest TEXT, kind TEXT, value TEXT, PRIMARY KEY (digest, kind));
"""


def rehash_requested() -> bool:
    """Whether `--rehash` (CVPIPE_REHASH=1) asked to read every file again."""
    return os.environ.get(REHASH_ENV, "") not in ("", "0", "false", "no")


def default_db() -> Path:
    return cache_path("digests.sqlite")


# Rows read or written by this process, by (database, device, inode): one version looks the same files up
# several times (the source images, then their hard links in the staging folder; the stored objects when an
# entity is verified, then when the next step commits them). A remembered row is judged against the file's
# stat like a fresh one, so a file changed since is still read again.
# Keyed by (database, device), then inode: a lookup per file then costs no key tuple (10^5 files per version).
# A row is (inode, size, mtime_ns, digest, hashed_at), as SQLite returns it (10^5 rows: no tuple made again).
_Row = tuple[int, int, int, str, int]
_ROWS: dict[tuple[str, int], dict[int, _Row]] = {}


def _trusted(row: _Row | None, st: os.stat_result) -> str | None:
    """The recorded digest if the file is as it was when read (and was not racily fresh then)."""
    if row is None:
        return None
    _, size, mtime_ns, digest, hashed_at = row
    if size != st.st_size or mtime_ns != st.st_mtime_ns or mtime_ns >= hashed_at - RACY_NS:
        return None
    return digest


class DigestCache:
    """sha256 of files, read only when their (device, inode, size, mtime) changed; see the module doc.
    `hashed` counts the files read by this instance."""

    def __init__(self, db: Path | None = None, rehash: bool | None = None):
        self.db = db or default_db()
        self.rehash = rehash_requested() if rehash is None else rehash
        self.hashed = 0
        self._conn: sqlite3.Connection | None = None
        self._shared = True  # rows may be remembered across instances (not for a throwaway in-memory database)
        self._pending: list[tuple[int, int, int, int, str, int]] = []

    # ---- the database (opened on first use; a broken one is replaced: it is only a cache) -------------
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = self._open(self.db)
            except (sqlite3.DatabaseError, OSError):
                try:  # a corrupt file: it is only a cache
                    self.db.unlink(missing_ok=True)
                    self._conn = self._open(self.db)
                except (sqlite3.Error, OSError) as e:  # unwritable (read-only home, a file system without locks)
                    log.warning("digest cache %s unusable (%s): every file is read in full this time", self.db, e)
                    self._conn = self._open(None)
                    self._shared = False
        return self._conn

    @staticmethod
    def _open(db: Path | None) -> sqlite3.Connection:
        if db is None:
            conn = sqlite3.connect(":memory:")
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        return conn

    def flush(self) -> None:
        if self._pending:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", self._pending)
            self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- file digests ---------------------------------------------------------------------------
    def known(self, st: os.stat_result) -> str | None:
        """The recorded digest of the file with this stat, if still trusted (never under --rehash)."""
        return self.known_many([st])[0]

    def known_many(self, stats: list[os.stat_result]) -> list[str | None]:
        """`known` of each stat, looked up in batches: one query per file cost more than hashing nothing
        (10,000 round trips into SQLite for an unchanged folder)."""
        if self.rehash:
            return [None] * len(stats)
        rows = {dev: self._rows(dev, {st.st_ino for st in stats if st.st_dev == dev})
                for dev in {st.st_dev for st in stats}}
        return [_trusted(rows[st.st_dev].get(st.st_ino), st) for st in stats]

    def _rows(self, dev: int, inodes: set[int]) -> dict[int, _Row]:
        """The recorded rows of these inodes of one device ({inode: row}; remembered across instances)."""
        rows = _ROWS.setdefault((str(self.db), dev), {}) if self._shared else {}
        missing = sorted(inodes - rows.keys())
        for chunk in _batches(missing):
            query = (f"SELECT ino, size, mtime_ns, digest, hashed_at FROM files WHERE dev=? AND ino IN "
                     f"({','.join('?' * len(chunk))})")
            rows.update({row[0]: row for row in self.conn.execute(query, (dev, *chunk))})
        return rows

    def record(self, st: os.stat_result, digest: str, hashed_at: int | None = None, settled: bool = False) -> None:
        """Remember that the file with stat `st` (taken before it was read) has this digest. `settled`: nothing
        will write the file again (a store object), so its fresh mtime is no reason to distrust it."""
        when = time.time_ns() if hashed_at is None else hashed_at
        if settled:
            when = max(when, st.st_mtime_ns + RACY_NS + 1)
        self._pending.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest, when))
        if self._shared:
            _ROWS.setdefault((str(self.db), st.st_dev), {})[st.st_ino] = (st.st_ino, st.st_size, st.st_mtime_ns,
                                                                          digest, when)
        if len(self._pending) >= 10_000:
            self.flush()

    def _hash(self, path: str | Path) -> tuple[os.stat_result, str, int]:
        started = time.time_ns()
        st = os.stat(path)
        digest = hashing.file_digest(path)
        if os.stat(path).st_mtime_ns != st.st_mtime_ns:
            raise ChangedWhileReading(f"{path} changed while it was being read; run again once it is written")
        return st, digest, started

    def digest(self, path: str | Path) -> str:
        return self.digests([Path(path)])[0]

    def digests(self, paths: Iterable[str | Path], threads: int = 2,
                stats: list[os.stat_result] | None = None) -> list[str]:
        """The sha256 of each file, in order: recorded ones without a read, the rest hashed (in threads:
        hashlib releases the GIL) and recorded. OSError (a missing file) as the file system raises it.
        `stats`: the files' stats, when the caller has just taken them (they are what a recorded digest is
        trusted by; a hashed file is stat'ed again around its read)."""
        paths = list(paths)
        out: list[str | None] = self.known_many(stats if stats is not None else [os.stat(p) for p in paths])
        misses = [i for i, d in enumerate(out) if d is None]
        if len(misses) > 1 and threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                hashed = list(pool.map(self._hash, [paths[i] for i in misses]))
        else:
            hashed = [self._hash(paths[i]) for i in misses]
        for i, (st, digest, started) in zip(misses, hashed):
            self.record(st, digest, started)
            out[i] = digest
        self.hashed += len(misses)
        return [d for d in out if d is not None]

    # ---- facts about content --------------------------------------------------------------------
    def facts(self, digests: Iterable[str], kind: str) -> dict[str, dict[str, Any]]:
        """{digest: fact} of those digests that have a `kind` fact recorded."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _batches(sorted(set(digests))):
            query = f"SELECT digest, value FROM facts WHERE kind=? AND digest IN ({','.join('?' * len(chunk))})"
            for digest, value in self.conn.execute(query, (kind, *chunk)):
                found[digest] = json.loads(value)
        return found

    def put_facts(self, kind: str, facts: dict[str, dict[str, Any]]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?)",
                                  [(d, kind, json.dumps(v, sort_keys=True)) for d, v in facts.items()])


def _batches(items: list, size: int = 500) -> Iterable[list]:
    """Slices of at most `size` items (SQLite limits the parameters of one statement)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


class ChangedWhileReading(OSError):
    """A file's modification time moved while it was hashed: its digest names no version of it."""
