import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads waiting for a
    busy core make them 10x slower. The previous count is given back: some parity tests elsewhere are calibrated
    with torch's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
