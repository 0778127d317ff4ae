"""Where cvpipe keeps its local, disposable caches: `$CVPIPE_CACHE`, else `~/.cache/cvpipe` (read at each call,
so a test or a run can point it elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_path(name: str) -> Path:
    """`name` (a folder or file of one cache) under the cache root."""
    return Path(os.environ.get("CVPIPE_CACHE", Path.home() / ".cache" / "cvpipe")) / name
