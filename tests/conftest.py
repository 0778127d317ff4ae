import os

import pytest
from coco_data import COCO_DEV, REPO

# The toy steps of tests/core register through `plugins:`; a config's plugins are imported only when allowed.
os.environ.setdefault("CVPIPE_ALLOW_PLUGINS", "toy_steps")

# Files that take longest (CPU seconds per file, measured with the suite on two workers; docs/testing.md): with
# `-n` they are handed out first (addopts has --no-loadscope-reorder, so xdist keeps this order), and the last
# file to start is a short one: no worker is left running a long one alone at the end.
LONGEST_FIRST = [
    "core/test_faults.py", "serving/test_service.py", "training/test_train_step.py", "data/test_data_prep.py",
    "loadtest/test_model_test_step.py", "training/test_distributed.py", "core/test_store_runner.py",
    "export/test_variants.py", "evaluation/test_model_eval_step.py", "training/test_finetune_known_classes.py",
    "serving/test_model_pack.py", "serving/test_memory.py", "export/test_onnx_export.py",
    "production/test_fuzz_decoder.py", "data/test_coco_sample.py", "training/test_finetune_sanity.py",
]


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per usable CPU (the affinity mask, as in a container), at most 4: each worker builds
    the session fixtures it needs (a packed model, a Bento) again, and more than 2 was not measured."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each worker is one of `-n` processes on as many cores: one torch thread in session fixtures too (the
        # per-test fixture below covers only tests), so two workers do not fight over the same cores.
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: keep the collection order

    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order inside a module and among the rest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small test models run fastest single-threaded, and CI's two cores are shared with service processes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fresh_bentoml_metrics():
    """BentoML registers its HTTP metrics in prometheus' global registry once per in-process app; a real
    worker makes one app, but tests make many in one process: forget them between tests."""
    yield
    import sys

    if "prometheus_client" not in sys.modules:
        return
    registry = sys.modules["prometheus_client"].REGISTRY
    for collector, names in list(registry._collector_to_names.items()):
        if any(n.startswith("bentoml_") for n in names):
            registry.unregister(collector)


def pytest_report_header() -> str:
    """Say which COCO folder the data tests read, so two runs' numbers are known to be comparable."""
    where = COCO_DEV.relative_to(REPO) if COCO_DEV.is_relative_to(REPO) else COCO_DEV
    return f"cvpipe test data: {where} (CVPIPE_TEST_COCO picks another, docs/testing.md)"
