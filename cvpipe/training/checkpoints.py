"""The model_train `checkpoints` entity: best.pt, last.pt, start.pt and checkpoints.json, written and read only
here.

    ck = Checkpoints.load(run_dir / "checkpoints")
    ck.best, ck.last                  # paths (last may be None in a directory that only holds best.pt)
    ck.start                          # the model training started from (epoch 0: after loading the pretrained
                                      # weights, un-folding and fresh class predictors), None in older runs
    ck.meta                           # best.pt's metadata: class_names, category_ids, input_size, epoch, metrics,
                                      # scale, pretrained {source, path, sha256, ...}, train_params
    model, _ = ck.load_model()        # the best weights, eval mode

checkpoints.json repeats best.pt's metadata so a reader (model_pack, model_eval) needs no torch to know what the
model is and which pretrained weights it started from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BEST, LAST, START, INDEX = "best.pt", "last.pt", "start.pt", "checkpoints.json"
FORMAT = "cvpipe-checkpoints"
VERSION = 1


@dataclass(frozen=True)
class Checkpoints:
    directory: Path
    best: Path
    last: Path | None = None
    meta: dict = field(default_factory=dict)
    start: Path | None = None

    @property
    def pretrained(self) -> dict:
        """Where training started: {"source", "path", "sha256", "loaded", ...} (empty when unknown)."""
        return dict(self.meta.get("pretrained") or {})

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    @property
    def input_size(self) -> list[int] | None:
        return self.meta.get("input_size")

    @classmethod
    def load(cls, directory: str | Path) -> Checkpoints:
        """The checkpoints of a model_train output directory (checkpoints.json, or best.pt's own metadata)."""
        d = Path(directory)
        index = d / INDEX
        if index.is_file():
            doc = json.loads(index.read_text())
            if doc.get("format") != FORMAT:
                raise ValueError(f"{index} is not a cvpipe checkpoints index (format {doc.get('format')!r})")
            best, last = _member(d, doc.get("best")), _member(d, doc.get("last"))
            if best is None:
                raise FileNotFoundError(f"{index} names no best checkpoint present in {d}")
            return cls(d, best, last, dict(doc.get("meta") or {}), _member(d, doc.get("start")))
        if not (d / BEST).is_file():
            raise FileNotFoundError(f"no {BEST} in {d}: not a model_train checkpoints directory")
        from cvpipe.models.yolox.checkpoints import read_checkpoint

        meta = read_checkpoint(d / BEST).get("meta")
        return cls(d, d / BEST, d / LAST if (d / LAST).is_file() else None, dict(meta or {}),
                   d / START if (d / START).is_file() else None)

    def save(self, directory: str | Path) -> None:
        """The entity's files into `directory` (linked where they can be: checkpoints are large)."""
        from cvpipe.pipeline.entity import link_tree

        link_tree(self.directory, Path(directory))

    def path(self, which: str) -> Path | None:
        """The file of "best", "last" or "start" (None when this directory has none)."""
        if which not in ("best", "last", "start"):
            raise ValueError(f"no {which!r} checkpoint: choose best, last or start")
        return getattr(self, which)

    def load_model(self, which: str = "best"):
        """(YOLOX in eval mode, LoadResult) of the best (or last, or start) checkpoint."""
        from cvpipe.models.yolox import load_model

        path = self.path(which)
        if path is None:
            raise FileNotFoundError(f"no {which} checkpoint in {self.directory}")
        return load_model(path)

    @classmethod
    def save_epoch(cls, directory: Path, model, meta: Mapping[str, Any], improved: bool, optimizer=None,
                   resume_state: Any = None) -> Checkpoints:
        """After an epoch: last.pt (with optimizer and resume state), best.pt when `improved` (or absent),
        start.pt after epoch 0 (the start, kept so model_eval can say what training gained over it), then
        checkpoints.json (written last, so it never names a file that is not there yet)."""
        from cvpipe.models.yolox import save_checkpoint

        directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, directory / LAST, meta, optimizer=optimizer, extra=resume_state)
        if meta.get("epoch") == 0:
            save_checkpoint(model, directory / START, meta)
        if improved or not (directory / BEST).exists():
            save_checkpoint(model, directory / BEST, meta)
            best_meta = _saved_meta(directory / BEST)
        else:
            best_meta = cls.load(directory).meta if (directory / INDEX).is_file() else _saved_meta(directory / BEST)
        start = START if (directory / START).is_file() else None
        doc = {"format": FORMAT, "version": VERSION, "best": BEST, "last": LAST, "start": start, "meta": best_meta}
        tmp = directory / f".{INDEX}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(directory / INDEX)
        return cls(directory, directory / BEST, directory / LAST, best_meta, directory / start if start else None)


def _saved_meta(path: Path) -> dict:
    from cvpipe.models.yolox.checkpoints import read_checkpoint

    return dict(read_checkpoint(path).get("meta") or {})


def _member(directory: Path, name: Any) -> Path | None:
    """A file named by the index, only as a plain name inside `directory` (nothing outside it)."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return None
    path = directory / name
    return path if path.is_file() else None
