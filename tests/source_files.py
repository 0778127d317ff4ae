"""Helpers for tests that version a source folder."""

from __future__ import annotations

import os
import time
from pathlib import Path


def settle(root: Path) -> None:
    """Every file an mtime in the past (as data not written this very second: the digest cache does not trust
    a file modified within the last second), in a fixed order."""
    t = time.time_ns() - 100_000_000_000
    for p in sorted(root.rglob("*")):
        if p.is_file():
            os.utime(p, ns=(t, t))
            t += 1_000_000
