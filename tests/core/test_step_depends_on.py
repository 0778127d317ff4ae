"""A step's `depends_on`: store state beyond its inputs that decides its result is part of its cache key and
recorded in its manifest; steps without it keep their keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvpipe.pipeline import StepContext, StepParams, step
from cvpipe.pipeline.runner import Runner
from cvpipe.pipeline.step import unregister


class ReaderParams(StepParams):
    pass


def marker_of(params, store, input_runs):
    """The toy's dependency: a marker file in the store (as model_eval's is the promotion log's champion)."""
    path = f"{store.pipeline_path}/_marker.json"
    return {"marker": store.read_json(path) if store.fs.exists(path) else None,
            "numbers_run": input_runs["numbers"]}


@pytest.fixture
def reader_step():
    @step("toy_reader", params=ReaderParams, inputs={"numbers": "toy_source.numbers"}, outputs=["copy"],
          depends_on=marker_of)
    def toy_reader(params: ReaderParams, ctx: StepContext, *, numbers: Path) -> dict:
        (ctx.output("copy") / "numbers.txt").write_text((numbers / "numbers.txt").read_text())
        return {}

    yield "toy_reader"
    unregister("toy_reader")


def test_a_changed_dependency_reruns_an_unchanged_one_is_cached(toy_cfg, reader_step, capsys):
    source = Runner(toy_cfg()).run_step("toy_source")
    first = Runner(toy_cfg()).run_step(reader_step)
    assert first.manifest["depends_on"] == {"marker": None, "numbers_run": source.run_id}
    assert Runner(toy_cfg()).run_step(reader_step).run_id == first.run_id
    assert "inputs, marker, numbers_run, params and code unchanged" in capsys.readouterr().err.replace("\n", " ")

    store = Runner(toy_cfg()).store
    store.write_json(f"{store.pipeline_path}/_marker.json", {"champion": "B"})
    second = Runner(toy_cfg()).run_step(reader_step)
    assert second.run_id != first.run_id and second.manifest["depends_on"]["marker"] == {"champion": "B"}
    assert Runner(toy_cfg()).run_step(reader_step).run_id == second.run_id

    store.fs.rm(f"{store.pipeline_path}/_marker.json")  # back to the first state: the first run is valid again
    assert Runner(toy_cfg()).run_step(reader_step).run_id == first.run_id


def test_steps_without_it_keep_their_key(toy_cfg):
    from cvpipe.pipeline.step import get_step

    runner = Runner(toy_cfg())
    rec = runner.run_step("toy_source")
    spec = get_step("toy_source")
    assert spec.depends_on is None and "depends_on" not in rec.manifest
    params = toy_cfg().params("toy_source")
    assert runner.cache_key(spec, params, {}) == runner.cache_key(spec, params, {}, None, None)
    assert runner.cache_key(spec, params, {}, None, {"x": 1}) != runner.cache_key(spec, params, {})
