"""A config imports only the steps it names: reading a data-steps config and fingerprinting their code (what every
`cvpipe run` of them does, a no-change rerun included) imports neither pandas nor matplotlib, the evaluation's
plotting, nor the serving stack; a name that is no step still gets the full list of steps."""

from __future__ import annotations

import json
import subprocess
import sys

from cvpipe.config import build_config

HEAVY = ("pandas", "matplotlib", "torch", "bentoml", "cvpipe.steps.model_eval", "cvpipe.steps.model_test")


def test_a_data_steps_config_imports_no_heavy_module(tmp_path):
    probe = f"""
import json, sys
from cvpipe.config import build_config
from cvpipe.pipeline.runner import code_version
from cvpipe.pipeline.step import execution_order, get_step
cfg = build_config({{"store": {str(tmp_path)!r}, "data_load": {{"source": "x"}}, "data_prep": None}})
order = execution_order(cfg.step_names())
for name in order:  # what the runner keys a reused run on: the step's code, read from source, not imported
    assert code_version(get_step(name).func.__module__)["modules"] > 10
print(json.dumps({{"order": order, "prep_seed": cfg.params("data_prep").seed,
                  "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"order": ["data_load", "data_prep"], "prep_seed": 0, "loaded": []}


def test_an_unknown_section_still_names_every_step(tmp_path):
    """In a fresh process (nothing imported yet), a misspelt section is told apart from a step not yet imported."""
    probe = f"""
from cvpipe.config import ConfigError, build_config
try:
    build_config({{"store": {str(tmp_path)!r}, "data_load": {{"source": "x"}}, "model_evl": {{}}}})
except ConfigError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "model_evl: unknown key at the top level" in out and "did you mean 'model_eval'" in out
    assert "model_test" in out  # the list of steps is complete, not just the ones imported so far


def test_step_sections_keep_the_file_order_whatever_was_imported_before(tmp_path):
    from cvpipe.pipeline.step import registry

    registry()  # every step imported (alphabetical order of registration)
    cfg = build_config({"store": str(tmp_path), "model_train": {}, "data_prep": {}, "data_load": {"source": "x"}})
    assert cfg.step_names() == ["model_train", "data_prep", "data_load"]
