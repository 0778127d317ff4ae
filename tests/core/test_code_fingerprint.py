"""The step cache keys on the step's own code: the project modules its module imports, transitively."""

import sys
import textwrap

from cvpipe.pipeline.code import code_fingerprint, module_closure
from cvpipe.pipeline.runner import code_version


def test_model_train_does_not_depend_on_report_modules():
    names = {name for name, _ in module_closure("cvpipe.steps.model_train")}
    assert "cvpipe.steps.model_train" in names and "cvpipe.pipeline.step" in names
    assert any(n.startswith("cvpipe.training.") for n in names)
    for report in ("cvpipe.data.report", "cvpipe.evaluation.report", "cvpipe.steps.model_eval",
                   "cvpipe.loadtest.report", "cvpipe.cli.main"):
        assert report not in names
    data_load = {name for name, _ in module_closure("cvpipe.steps.data_load")}
    assert "cvpipe.data.formats" in data_load and "cvpipe.data.sources" in data_load  # imported inside functions
    assert not any(n.startswith("cvpipe.training") for n in data_load)


def test_fixing_a_module_the_step_does_not_import_keeps_its_key(tmp_path, monkeypatch):
    pkg = tmp_path / "myproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def train():\n    return 1\n")
    (pkg / "report.py").write_text("def render():\n    return 'repot'\n")
    (pkg / "steps.py").write_text(textwrap.dedent("""
        from . import model

        def step():
            from myproj.helpers import util  # lazy, inside the function
            return model.train() + util()
    """))
    (pkg / "helpers.py").write_text("def util():\n    return 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = {n for n, _ in module_closure.__wrapped__("myproj.steps")}
    assert {"myproj", "myproj.steps", "myproj.model", "myproj.helpers"} <= names and "myproj.report" not in names
    key = _fresh_fingerprint("myproj.steps")
    (pkg / "report.py").write_text("def render():\n    return 'report'\n")  # the typo fixed
    assert _fresh_fingerprint("myproj.steps") == key
    (pkg / "helpers.py").write_text("def util():\n    return 3\n")
    assert _fresh_fingerprint("myproj.steps") != key
    sys.modules.pop("myproj", None)


def _fresh_fingerprint(module: str) -> str:
    module_closure.cache_clear()
    return code_fingerprint(module)["fingerprint"]


def test_manifest_code_names_the_module():
    info = code_version("cvpipe.steps.data_load")
    assert info["module"] == "cvpipe.steps.data_load" and info["modules"] > 3 and len(info["fingerprint"]) == 16
