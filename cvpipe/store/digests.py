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
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cvpipe.cache import cache_path
from cvpipe.store import hashing

log = logging.getLogger(__name__)

_HEX64 = re.compile("[0-9a-f]{64}")  # a sha256 as the cache records it (any other row is not believed)
T = TypeVar("T")
R = TypeVar("R")
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


@dataclass(frozen=True)
class FileStats:
    """What a recorded digest is trusted by, for many files: device, inode, size and mtime (ns), a numpy column
    each. 10^5 `os.stat_result`s were 2.3 million Python objects (~90 MB that pymalloc kept after they were
    freed); these columns are 3 MB."""

    dev: np.ndarray  # uint64
    ino: np.ndarray  # uint64
    size: np.ndarray  # int64
    mtime_ns: np.ndarray  # int64

    @classmethod
    def of(cls, paths: Sequence[str | Path]) -> FileStats:
        """Stat each path, in order (OSError, e.g. FileNotFoundError naming the file, as os.stat raises it)."""
        return cls.of_results(os.stat(p) for p in paths)

    @classmethod
    def of_results(cls, results: Iterable[os.stat_result]) -> FileStats:
        cols: tuple[list[int], ...] = ([], [], [], [])
        for st in results:  # one stat_result alive at a time: only its four numbers are kept
            for col, value in zip(cols, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)):
                col.append(value)
        return cls(np.array(cols[0], np.uint64), np.array(cols[1], np.uint64), np.array(cols[2], np.int64),
                   np.array(cols[3], np.int64))

    def __len__(self) -> int:
        return len(self.ino)


class _Rows:
    """Recorded rows of one device, by inode, as sorted numpy columns (digests as 64 ASCII bytes), plus the rows
    added since the last merge. A dict of row tuples was 5 Python objects a file: 10^6 at 10^5 images and
    their stored objects, kept for the whole process."""

    MERGE_AT = 4096  # rows added before they are merged into the columns

    def __init__(self) -> None:
        self.ino = np.empty(0, np.uint64)
        self.size = np.empty(0, np.int64)
        self.mtime_ns = np.empty(0, np.int64)
        self.hashed_at = np.empty(0, np.int64)
        self.digest = np.empty(0, "S64")
        self._added: dict[int, _Row] = {}

    def add(self, row: _Row) -> None:
        self._added[row[0]] = row
        if len(self._added) >= self.MERGE_AT:
            self._merge()

    def add_many(self, batches: Iterable[list[_Row]]) -> None:
        """Rows in batches (as many queries return them), merged once: each batch becomes columns at once."""
        self._merge([self._columns(rows) for rows in batches])

    @staticmethod
    def _columns(rows: list[_Row]) -> list[np.ndarray]:
        """Rows as the memo's columns, without those whose digest is not 64 hex digits (a damaged cache)."""
        good = [row for row in rows if isinstance(row[3], str) and _HEX64.fullmatch(row[3])]
        ino, size, mtime_ns, digest, hashed_at = zip(*good) if good else ((),) * 5
        return [np.array(ino, np.uint64), np.array(size, np.int64), np.array(mtime_ns, np.int64),
                np.array(hashed_at, np.int64), np.array([d.encode() for d in digest], "S64")]

    def _merge(self, more: list[list[np.ndarray]] | None = None) -> None:
        parts = [*(more or []), *([self._columns(list(self._added.values()))] if self._added else [])]
        if not parts:
            return
        self._added = {}
        cols = [np.concatenate([old, *(part[k] for part in parts)]) for k, old in
                enumerate((self.ino, self.size, self.mtime_ns, self.hashed_at, self.digest))]
        # sorted by inode, a later row replacing an earlier one of the same inode
        order = np.argsort(cols[0], kind="stable")
        last = np.ones(len(order), bool)
        last[:-1] = cols[0][order][1:] != cols[0][order][:-1]
        keep = order[last]
        self.ino, self.size, self.mtime_ns, self.hashed_at, self.digest = (c[keep] for c in cols)

    def find(self, inodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row position, found) of each inode."""
        self._merge()
        pos = np.searchsorted(self.ino, inodes)
        pos[pos == len(self.ino)] = 0
        found = self.ino[pos] == inodes if len(self.ino) else np.zeros(len(inodes), bool)
        return pos, found

    def trusted(self, stats: FileStats, where: np.ndarray) -> list[str | None]:
        """The recorded digest of each file of `stats[where]` that is as it was when read (and was not racily
        fresh then), else None."""
        pos, found = self.find(stats.ino[where])
        if not len(self.ino):
            return [None] * len(where)
        ok = found & (self.size[pos] == stats.size[where]) & (self.mtime_ns[pos] == stats.mtime_ns[where]) & \
            (self.mtime_ns[pos] < self.hashed_at[pos] - RACY_NS)
        digests = self.digest[pos]
        return [d.decode() if good else None for d, good in zip(digests.tolist(), ok.tolist())]


# Rows read or written by this process, by (database, device): one version looks the same files up several
# times (the source images, then their hard links in the staging folder; the stored objects when an entity is
# verified, then when the next step commits them). A remembered row is judged against the file's stat like a
# fresh one, so a file changed since is still read again.
# A row is (inode, size, mtime_ns, digest, hashed_at), as SQLite returns it.
_Row = tuple[int, int, int, str, int]
_ROWS: dict[tuple[str, int], _Rows] = {}


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
        self._own_rows: dict[tuple[str, int], _Rows] = {}  # the rows this instance saw, when not shared

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
        return self.known_many(FileStats.of_results([st]))[0]

    def known_many(self, stats: FileStats) -> list[str | None]:
        """`known` of each file, looked up in batches: one query per file cost more than hashing nothing
        (10,000 round trips into SQLite for an unchanged folder)."""
        out: list[str | None] = [None] * len(stats)
        if self.rehash:
            return out
        for dev in np.unique(stats.dev).tolist():
            where = np.flatnonzero(stats.dev == dev)
            found = self._rows(dev, stats.ino[where]).trusted(stats, where)
            for i, digest in zip(where.tolist(), found):
                out[i] = digest
        return out

    def _rows(self, dev: int, inodes: np.ndarray) -> _Rows:
        """The recorded rows of one device, holding those of these inodes that were ever recorded (remembered
        across instances)."""
        rows = self._rows_of(dev)
        _, found = rows.find(inodes)
        missing = np.unique(inodes[~found]).tolist()
        query = "SELECT ino, size, mtime_ns, digest, hashed_at FROM files WHERE dev=? AND ino IN ({})"
        rows.add_many(self.conn.execute(query.format(",".join("?" * len(chunk))), (dev, *chunk)).fetchall()
                      for chunk in _batches(missing))
        return rows

    def _rows_of(self, dev: int) -> _Rows:
        mine, key = _ROWS if self._shared else self._own_rows, (str(self.db), dev)
        if key not in mine:
            mine[key] = _Rows()
        return mine[key]

    def record(self, st: os.stat_result, digest: str, hashed_at: int | None = None, settled: bool = False) -> None:
        """Remember that the file with stat `st` (taken before it was read) has this digest. `settled`: nothing
        will write the file again (a store object), so its fresh mtime is no reason to distrust it."""
        when = time.time_ns() if hashed_at is None else hashed_at
        if settled:
            when = max(when, st.st_mtime_ns + RACY_NS + 1)
        self._pending.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest, when))
        self._rows_of(st.st_dev).add((st.st_ino, st.st_size, st.st_mtime_ns, digest, when))
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
                stats: FileStats | None = None) -> list[str]:
        """The sha256 of each file, in order: recorded ones without a read, the rest hashed (in threads:
        hashlib releases the GIL) and recorded. OSError (a missing file) as the file system raises it.
        `stats`: the files' stats, when the caller has just taken them (they are what a recorded digest is
        trusted by; a hashed file is stat'ed again around its read)."""
        paths = list(paths)
        out: list[str | None] = self.known_many(stats if stats is not None else FileStats.of(paths))
        misses = [i for i, d in enumerate(out) if d is None]
        for i, (st, digest, started) in zip(misses, _in_threads(self._hash, [paths[i] for i in misses], threads)):
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


def _in_threads(fn: Callable[[T], R], items: list[T], threads: int) -> Iterator[R]:
    """fn of each item, in order, computed in `threads` threads with a few items per thread in flight: a
    future per item up front (Executor.map) held 10^5 futures and their results at once."""
    if len(items) < 2 or threads < 2:
        yield from map(fn, items)
        return
    window = threads * 16
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in items[:window])
        for item in items[window:]:
            done = pending.popleft().result()
            pending.append(pool.submit(fn, item))
            yield done
        while pending:
            yield pending.popleft().result()


def _batches(items: list, size: int = 500) -> Iterable[list]:
    """Slices of at most `size` items (SQLite limits the parameters of one statement)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


class ChangedWhileReading(OSError):
    """A file's modification time moved while it was hashed: its digest names no version of it."""
