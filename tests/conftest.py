import os

import pytest
from coco_data import COCO_DEV, REPO

# The toy steps of tests/core register through `plugins:`; a config's plugins are imported only when allowed.
os.environ.setdefault("CVPIPE_ALLOW_PLUGINS", "toy_steps")


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
