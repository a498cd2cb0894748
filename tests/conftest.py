import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """The tests use tiny tensors: intra-op threads gain nothing and, on a loaded 2-core machine, OpenMP
    spinning makes them 10-100x slower. (Subprocess tests run their tools with the default threads.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
