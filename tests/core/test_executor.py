import os

import pytest

from cvpipe.pipeline.executor import parallel_map


def square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@pytest.mark.parametrize("kind", ["serial", "process"])
def test_results_in_input_order(kind, monkeypatch):
    monkeypatch.setattr("cvpipe.pipeline.executor.POOL_MIN_ITEMS", 2)
    items = list(range(100, 0, -1))
    out = list(parallel_map(square_with_pid, items, kind=kind, workers=2, chunksize=8))
    assert [v for v, _ in out] == [x * x for x in items]
    pids = {p for _, p in out}
    assert (pids == {os.getpid()}) if kind == "serial" else (os.getpid() not in pids)


def test_unknown_executor():
    with pytest.raises(ValueError, match="unknown executor"):
        list(parallel_map(square_with_pid, range(100), kind="spark", workers=2))


def test_small_inputs_stay_in_process():
    pids = {p for _, p in parallel_map(square_with_pid, range(20), kind="process", workers=2)}
    assert pids == {os.getpid()}
