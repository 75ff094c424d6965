import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many small ops; on a shared 2-core machine, thread hand-offs cost more than they
    save (measured: a SmolLM2 forward+backward is 3x faster with one thread when other jobs run)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
