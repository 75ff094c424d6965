import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run many microsecond-sized ops; on a shared 2-core machine thread hand-offs dominate."""
    if request.node.get_closest_marker("real"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
