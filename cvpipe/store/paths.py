"""Names that come from data or from a store are checked before they become paths.

A run id, a step or entity name, a digest, a file name in an entity index, an archive member or an image
name in an annotation file is hostile until checked: every check here either returns the name unchanged or
raises ValueError, and nothing joins an unchecked name into a path.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

RUN_ID_RE = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{6}")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"^[A-Za-z]:")


class InvalidRunId(ValueError, KeyError):
    """Not a run id. A KeyError too, so callers that look runs up treat it as "no such run"."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def validate_run_id(run_id: object) -> str:
    """`run_id` if it has the store's run id shape (`20261124T170604885Z-53dc07`), else InvalidRunId."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise InvalidRunId(f"no run {str(run_id)[:80]!r}: not a run id (run ids look like "
                           f"20261124T170604885Z-53dc07; see `cvpipe runs`)")
    return run_id


def validate_name(name: object, what: str = "name") -> str:
    """A step, entity, env or pipeline name: one path segment of letters, digits, `_`, `-`, `.`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid {what} {str(name)[:80]!r}: use letters, digits, '_', '-' and '.'")
    return name


def validate_digest(digest: object, what: str = "digest") -> str:
    """A lowercase hex sha256."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid {what} {str(digest)[:80]!r}: not a sha256 hex digest")
    return digest


_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")  # one segment, not starting with a dot


def safe_relpath(name: object, what: str = "path") -> str:
    """A relative POSIX path that stays below whatever it is joined to: no absolute path, drive letter,
    backslash, NUL, empty segment, `.` or `..`. Returns it unchanged."""
    if isinstance(name, str) and _PLAIN.fullmatch(name):  # the common case (a stored file's name), checked fast
        return name
    if not isinstance(name, str) or not name or len(name) > 4096:
        raise ValueError(f"unsafe {what} {str(name)[:80]!r}: empty or not text")
    if "\x00" in name or "\\" in name or _DRIVE.match(name) or name.startswith("/"):  # POSIX: absolute = leading /
        raise ValueError(f"unsafe {what} {name[:200]!r}: absolute, drive letter, backslash or NUL")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"unsafe {what} {name[:200]!r}: empty, '.' or '..' segment")
    return name


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies inside `root` (also resolved)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


class InsideCheck:
    """`is_inside(root, path)` for many paths below one root: each folder's real path is resolved once per
    check object (a walk of 100,000 images meets a few hundred folders), and only a path whose last part is
    itself a symlink is resolved in full. Make a new one per read: a folder replaced later is not seen."""

    def __init__(self, root: Path):
        self.real_root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> bool:
        folder, name = os.path.split(os.fspath(path))
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # not there: nothing to follow
            link = False
        real = os.path.realpath(path) if link else os.path.join(real_folder, name)
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)


def join_inside(root: Path, name: str, what: str = "path") -> Path:
    """root / name after checking that the name is a safe relative path and that, symlinks resolved, the
    result stays inside root. ValueError otherwise."""
    path = Path(root) / safe_relpath(name, what)
    if not is_inside(root, path):
        raise ValueError(f"unsafe {what} {name[:200]!r}: leads outside {root} (through a symlink)")
    return path
