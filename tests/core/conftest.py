from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # so `toy_steps` imports as a config plugin

import toy_steps  # noqa: E402,F401  (registers the toy steps)

from cvpipe.config import build_config  # noqa: E402


def toy_config_dict(store: str, **sections) -> dict:
    data = {"store": store, "env": "test", "pipeline": "toy", "plugins": ["toy_steps"],
            "toy_source": {"n": 4}, "toy_double": {}}
    data.update(sections)
    return data


@pytest.fixture
def toy_cfg(tmp_path):
    def make(store: str | None = None, overrides: list[str] | None = None, **sections):
        return build_config(toy_config_dict(store or str(tmp_path / "store"), **sections), overrides)

    return make


@pytest.fixture
def toy_config_file(tmp_path):
    def make(**sections) -> Path:
        p = tmp_path / "toy.yaml"
        p.write_text(yaml.safe_dump(toy_config_dict(str(tmp_path / "store"), **sections)))
        return p

    return make
