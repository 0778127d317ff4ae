import os

import pytest

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
