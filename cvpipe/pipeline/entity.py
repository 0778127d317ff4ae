"""Entities: the typed things steps exchange (Kedro's datasets idea: the class owns its load and save).

An entity class has `load(directory) -> entity` (a classmethod) and `save(directory)`: the runner materialises
an input run's directory and hands the step `Type.load(dir)`; it saves what the step returns with
`entity.save(empty_dir)` and commits that directory. A step function therefore names what it consumes in its
signature (`dataset: DetectionData, images: ImageFiles`) and returns what it produces (`Produced(...)`); it
never sees the store, nor where its inputs came from or its outputs go.

An input annotated `Path` (or not annotated) is handed as the raw directory (throwaway and plugin steps).
"""

from __future__ import annotations

import os
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Entity(Protocol):
    """What the runner needs of an entity class (see the module docstring)."""

    @classmethod
    def load(cls, directory: Path) -> Any: ...

    def save(self, directory: Path) -> None: ...


def link_tree(src: Path, dest: Path, names: typing.Iterable[str] | None = None) -> None:
    """Hard-link (or copy, across file systems) files of `src` into `dest`, keeping sub-folders; `names` limits
    it to those top-level names. Saving an entity built in scratch costs no copy of its bytes."""
    src, dest = Path(src), Path(dest)
    if src.resolve() == dest.resolve():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()) if names is None else [src / n for n in names]:
        target = dest / path.name
        if path.is_dir():
            link_tree(path, target)
            continue
        if target.exists():
            target.unlink()
        try:  # a materialised input may be a symlink into the store: follow_symlinks links what it names
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)


@dataclass(frozen=True)
class Folder:
    """An entity that is a folder of files for people rather than code: a report (HTML and PNGs), metrics
    JSON, curves. Built in the step's scratch (`ctx.workdir(name)`), saved by linking its files."""

    directory: Path

    @classmethod
    def load(cls, directory: Path) -> Folder:
        return cls(Path(directory))

    def save(self, directory: Path) -> None:
        link_tree(self.directory, directory)

    def __truediv__(self, name: str) -> Path:
        return self.directory / name


def entity_class(annotation: Any) -> tuple[type | None, bool]:
    """(the entity class, optional) of a step parameter's annotation: `X`, `X | None`, `Optional[X]`;
    (None, ...) for `Path` or no annotation (the raw directory is handed)."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else None
    if not isinstance(annotation, type) or issubclass(annotation, Path) or not hasattr(annotation, "load"):
        return None, optional
    return annotation, optional


def load_entity(cls: type | None, directory: Path | None) -> Any:
    if directory is None:
        return None
    return Path(directory) if cls is None else cls.load(Path(directory))  # type: ignore[attr-defined]


def save_entity(value: Any, directory: Path, expected: type | None, where: str) -> None:
    """Save what a step returned for one output into `directory` (empty), checking its declared class."""
    if expected is not None and not isinstance(value, expected):
        raise TypeError(f"{where}: expected a {expected.__name__}, the step returned a {type(value).__name__}")
    if isinstance(value, Path):
        link_tree(value, directory)
    elif hasattr(value, "save"):
        value.save(Path(directory))
    else:
        raise TypeError(f"{where}: a {type(value).__name__} is not an entity (it has no save(directory))")
