"""Find pretrained weights: a local path, or a URL downloaded once into a cache.

Offline machines get a clear warning naming the URL and what to do, and random initialisation (or an error
when the weights are required).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

log = logging.getLogger(__name__)

_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/yolox"
_MEGVII = "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0"

# COCO-pretrained weights per scale: mmdetection's official YOLOX checkpoints where it has one (tiny, s, l, x;
# from mmdetection's configs/yolox metafile), Megvii's releases for nano and m which mmdetection does not ship.
DEFAULT_WEIGHTS: dict[str, str] = {
    "nano": f"{_MEGVII}/yolox_nano.pth",
    "tiny": f"{_MMDET}/yolox_tiny_8x8_300e_coco/yolox_tiny_8x8_300e_coco_20211124_171234-b4047906.pth",
    "s": f"{_MMDET}/yolox_s_8x8_300e_coco/yolox_s_8x8_300e_coco_20211121_095711-4592a793.pth",
    "m": f"{_MEGVII}/yolox_m.pth",
    "l": f"{_MMDET}/yolox_l_8x8_300e_coco/yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth",
    "x": f"{_MMDET}/yolox_x_8x8_300e_coco/yolox_x_8x8_300e_coco_20211126_140254-1ef88d67.pth",
}

CACHE_ENV = "CVPIPE_WEIGHTS_DIR"
CHUNK = 1 << 20


class WeightsUnavailable(RuntimeError):
    """Required weights could not be found or downloaded."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cvpipe" / "weights")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _cache_name(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise ValueError(f"cannot derive a file name from URL {url!r}")
    return name


def _mmlab_hash_prefix(name: str) -> str | None:
    """OpenMMLab names published checkpoints '<name>-<first 8 hex of sha256>.pth'."""
    m = re.search(r"-([0-9a-f]{8})\.pth$", name)
    return m.group(1) if m else None


def resolve_weights(spec: str | os.PathLike | None, cache_dir: Path | None = None, sha256: str | None = None,
                    required: bool = False, timeout: float = 30.0) -> Path | None:
    """None / "none" -> None; a local path -> that path; an http(s) URL -> the cached (downloaded once) file.

    When a URL cannot be reached the result is None (random init) with a warning, or WeightsUnavailable when
    `required`. A download whose SHA-256 differs from `sha256` is removed and raises ValueError.
    """
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return None
    text = str(spec).strip()
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    if not re.match(r"^https?://", text, re.I):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if sha256:
            _check_sha(path, sha256, remove=False)
        return path

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / _cache_name(text)
    if target.is_file():
        if not sha256 or sha256_of(target) == sha256.lower():
            return target
        log.warning("cached %s does not match the expected SHA-256; downloading it again", target)
        target.unlink()
    try:
        _download(text, target, sha256, timeout)
    except (httpx.HTTPError, OSError) as e:
        msg = (f"could not download pretrained weights from {text} ({type(e).__name__}: {e}). "
               f"Download the file by hand and put it at {target}, or give its local path or another URL "
               f"(model_train: --set model_train.pretrained=PATH_OR_URL)")
        if required:
            raise WeightsUnavailable(msg) from e
        log.warning("%s; continuing with random initialisation", msg)
        return None
    return target


def _check_sha(path: Path, expected: str, remove: bool) -> None:
    actual = sha256_of(path)
    if actual != expected.lower():
        if remove:
            path.unlink(missing_ok=True)
        raise ValueError(f"SHA-256 mismatch for {path.name}: expected {expected.lower()}, got {actual}")


def _download(url: str, target: Path, sha256: str | None, timeout: float) -> None:
    """Stream `url` into a temp file beside `target`, verify, then rename (no partial file is ever left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length") or 0) or None
            received = 0
            with _progress(target.name, total) as advance:
                for chunk in resp.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        if total is not None and received != total:
            raise httpx.HTTPError(f"download of {url} ended after {received} of {total} bytes")
        actual = digest.hexdigest()
        if sha256 and actual != sha256.lower():
            raise ValueError(f"SHA-256 mismatch for {url}: expected {sha256.lower()}, got {actual}")
        prefix = _mmlab_hash_prefix(target.name)
        if not sha256 and prefix and not actual.startswith(prefix):
            log.warning("%s: SHA-256 %s does not start with the %s in its name; the file may be damaged",
                        target.name, actual, prefix)
        os.replace(tmp, target)
        log.info("downloaded %s (%d bytes, sha256 %s)", target, received, actual)
    finally:
        tmp.unlink(missing_ok=True)


class _progress:
    """Rich download bar on a terminal, nothing otherwise; used as `with _progress(name, total) as advance`."""

    def __init__(self, name: str, total: int | None):
        self.name, self.total, self.bar = name, total, None

    def __enter__(self):
        if not sys.stderr.isatty():
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task(f"download {self.name}", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
