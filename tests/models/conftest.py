import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    # the machine is shared: small models run fastest single-threaded anyway
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
