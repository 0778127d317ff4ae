"""Figures reused by what they show. A report plot is a pure function of a few numbers (counts per class and
split, histogram bins, the sample images' content and boxes) and of the code that draws it: keyed by those, a
plot drawn once is linked into the next report instead of drawn again. Matplotlib's layout and PNG encoding
are most of a data report's fixed cost (seconds on a loaded machine), and a new data version that changes one
image changes few of them.

The cache is `$CVPIPE_CACHE/plots/<sha256>.png`: local, disposable, safe to delete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvpipe.cache import cache_path

log = logging.getLogger(__name__)


def plots_dir() -> Path:
    return cache_path("plots")


def code_version(*files: str | Path) -> str:
    """The digest of the drawing code (its source files): a changed plot function is a new key."""
    from importlib.metadata import version  # not `import matplotlib`: a plot taken from the cache needs no matplotlib

    h = hashlib.sha256(version("matplotlib").encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def plot_key(code: str, name: str, shown: Any) -> str:
    return hashlib.sha256(json.dumps([code, name, shown], sort_keys=True, default=str).encode()).hexdigest()


def reuse_or_draw(path: Path, key: str, draw: Callable[[Path], Path]) -> Path:
    """`path` holding the plot under `key`: linked from the cache when drawn before, else drawn by
    `draw(path)` and kept in the cache."""
    cached = plots_dir() / f"{key}.png"
    if cached.is_file():
        try:
            _link_or_copy(cached, path)
            return path
        except OSError as e:  # the cache is only a cache
            log.debug("plot cache %s unusable (%s): drawing", cached, e)
    out = draw(path)
    _keep(out, cached)
    return out


def _keep(png: Path, cached: Path) -> None:
    """Copy a drawn plot into the cache (whole or not at all; a failure only costs drawing it again)."""
    tmp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(png, tmp)
        os.replace(tmp, cached)
    except OSError as e:
        log.debug("could not keep plot %s in the cache: %s", png, e)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
