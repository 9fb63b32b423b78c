import os

import pytest  # noqa: E402
import torch  # noqa: E402  (does not import triton)

# Triton kernels run on CPU tensors only through the interpreter, which must be chosen before triton is imported;
# where a CUDA GPU is visible the tests put their tensors on it and the kernels are compiled (never forced there).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads waiting for a
    busy core make them 10x slower. The previous count is given back: some parity tests elsewhere are calibrated
    with torch's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_threads():
    """Exactly two threads, whatever the machine: the CPU kernels' split into parallel tasks and channels_last runs
    depends on the count, and the kernel-path tests must cross it (tests/ops/test_splat_kernel_paths.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _mount_tmpfs(mount, options):
    import subprocess

    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 3 MiB tmpfs (a real full disk), where mounting is allowed (root); skipped elsewhere."""
    yield from _mount_tmpfs(tmp_path / "disk", "size=3m")


@pytest.fixture
def read_only_tmpfs(tmp_path):
    """A read-only folder that root cannot write either (chmod does not stop root); skipped where mounting is not
    allowed."""
    yield from _mount_tmpfs(tmp_path / "ro", "size=1m,ro")
