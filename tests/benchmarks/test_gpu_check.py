"""benchmarks.gpu_check's pieces that decide a verdict, and the script's refusal without a GPU (the whole check
runs in CI as `bash scripts/gpu_check.sh --dry-run`)."""
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_strided_inputs_are_really_strided_and_keep_their_values():
    x = torch.randn(2, 6, 5, 7)
    view = gpu_check._layouts(x, "strided")
    assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    assert view.stride(3) == 2 and torch.equal(view, x)
    cl = gpu_check._layouts(x, "channels_last")
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)


def test_the_rule_accepts_torchs_own_error_and_rejects_more():
    ref64 = torch.linspace(-3, 3, 101, dtype=torch.float64)
    same = ref64.to(torch.bfloat16)
    err, bound = gpu_check._error(same, same, ref64, torch.bfloat16)
    assert err <= bound
    worse = (ref64 + 0.1).to(torch.bfloat16)
    err, bound = gpu_check._error(worse, same, ref64, torch.bfloat16)
    assert err > bound


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_check_says_so_in_one_line(tmp_path):
    for cmd in ([sys.executable, "-m", "benchmarks.gpu_check", "ops"], ["bash", "scripts/gpu_check.sh"]):
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "OUT": str(tmp_path)})
        assert result.returncode == 2, result
        assert "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
        assert not os.listdir(tmp_path)  # nothing written


def test_bad_arguments_exit_2():
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "usage: bash scripts/gpu_check.sh" in result.stderr
