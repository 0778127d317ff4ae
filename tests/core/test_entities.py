"""Steps as functions of typed entities: the runner loads each input as the class its parameter names, saves
the entities a step returns, resolves store state for it (loaded only when the step runs), and no step module
reaches into the store."""

from __future__ import annotations

import ast
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvpipe.pipeline import Output, Produced, Resolved, StepContext, StepParams, step
from cvpipe.pipeline.runner import Runner, StepFailed
from cvpipe.pipeline.step import get_step, registry, unregister

STEPS_DIR = Path(__file__).resolve().parents[2] / "cvpipe" / "steps"


@dataclass(frozen=True)
class Numbers:
    """A toy entity: toy_source's numbers.txt, one integer a line."""

    values: tuple[int, ...]

    @classmethod
    def load(cls, directory: Path) -> Numbers:
        return cls(tuple(int(x) for x in (directory / "numbers.txt").read_text().split()))

    def save(self, directory: Path) -> None:
        (directory / "numbers.txt").write_text("\n".join(map(str, self.values)))


class SumParams(StepParams):
    mode: str = "ok"


@pytest.fixture
def sum_step():
    loads = []

    def counted(params, store, input_runs):
        return Resolved({"numbers_run": input_runs["numbers"]}, lambda: loads.append(1) or 100)

    @step("toy_sum", params=SumParams, inputs={"numbers": "toy_source.numbers"},
          outputs=[Output("total", Numbers)], resolve={"offset": counted})
    def toy_sum(params: SumParams, ctx: StepContext, *, numbers: Numbers, offset: int) -> Produced:
        assert isinstance(numbers, Numbers), type(numbers)  # loaded, not a folder
        if params.mode == "undeclared":
            return Produced({}, total=Numbers((0,)), extra=Numbers((1,)))
        if params.mode == "wrong_class":
            return Produced({}, total=[sum(numbers.values)])
        return Produced({"count": len(numbers.values)}, total=Numbers((sum(numbers.values) + offset,)))

    yield loads
    unregister("toy_sum")


def test_inputs_are_loaded_and_returned_entities_saved(toy_cfg, sum_step):
    Runner(toy_cfg()).run_step("toy_source")  # numbers 0..3
    runner = Runner(toy_cfg())
    rec = runner.run_step("toy_sum")
    assert rec.manifest["summary"] == {"count": 4}
    total = Numbers.load(Path(runner.store.materialize(rec, "total")))
    assert total.values == (0 + 1 + 2 + 3 + 100,)  # the resolved value reached the step


def test_the_resolver_keys_the_cache_and_loads_only_for_a_real_run(toy_cfg, sum_step):
    source = Runner(toy_cfg()).run_step("toy_source")
    first = Runner(toy_cfg()).run_step("toy_sum")
    assert first.manifest["depends_on"] == {"offset": {"numbers_run": source.run_id}}
    assert sum_step == [1]
    assert Runner(toy_cfg()).run_step("toy_sum").run_id == first.run_id  # cached: nothing loaded
    assert sum_step == [1]


@pytest.mark.parametrize("mode, message", [("undeclared", r"returned entities \['extra', 'total'\]; it declares"),
                                           ("wrong_class", "expected a Numbers, the step returned a list")])
def test_a_step_returning_other_entities_fails_clearly(toy_cfg, sum_step, mode, message):
    Runner(toy_cfg()).run_step("toy_source")
    with pytest.raises(StepFailed, match=message):
        Runner(toy_cfg(toy_sum={"mode": mode})).run_step("toy_sum")


def test_every_step_names_its_entities_in_its_signature():
    """A reader knows what a step consumes from its signature: every input of the six steps is annotated with
    an entity class (loaded by the runner), every output declares its class."""
    builtin = {name: spec for name, spec in registry().items() if spec.func.__module__.startswith("cvpipe.steps.")}
    assert len(builtin) == 6
    for name, spec in builtin.items():
        hints = typing.get_type_hints(spec.func)
        for kw, cls in spec.input_classes().items():
            assert cls is not None and hasattr(cls, "load"), f"{name}.{kw}: {hints.get(kw)} is not an entity"
        for out in spec.outputs.values():
            assert out.entity is not None and hasattr(out.entity, "save"), f"{name} output {out.name}"
        assert hints["return"] is Produced, name
    assert get_step("model_eval").resolve  # the champion comes resolved, not fetched by the step


def test_no_step_module_reaches_into_the_store():
    """No step imports cvpipe.store or touches a store attribute: store state comes resolved, decisions go
    through ctx.decide."""
    for path in sorted(STEPS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("cvpipe.store."), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Attribute):
                assert node.attr != "store", f"{path.name}:{node.lineno} uses .store"
            named = isinstance(node, ast.Constant) and node.value == "store"
            assert not named, f"{path.name}:{node.lineno} names 'store' (getattr?)"
    assert not hasattr(StepContext(step="x", run_id="r", outputs={}, scratch=Path(".")), "store")
