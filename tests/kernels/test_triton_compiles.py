"""The Triton kernels compile for real GPUs, here without one, and run compiled where one is.

scripts/triton_compile_check.py --core compiles a handful of the specialisations the launchers make (a stage shape
in fp32, float64, and splat_conv_pool at Cityscapes layer3 in bf16 channels_last) with Triton's own compiler for sm_80 and sm_90, in a process without TRITON_INTERPRET (the
kernels must be JIT functions); a compile error, or any f32 in a float64 kernel's IR (a Python float argument,
which the compiler types fp32 while the interpreter keeps a double), fails. The full and --quick sets are for CI.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def test_core_specialisations_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "triton_compile_check.py"), "--core", "--jobs", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for arch in ("sm_80", "sm_90"):
        for kernel in ("_pool_partial_kernel", "_pool_bwd_kernel", "_combine_fwd_kernel", "_combine_bwd_kernel",
                       "_combine_bwd_finish_kernel", "_sum_rows_kernel", "_conv_bn_relu_pool_kernel",
                       "_gap_finish_kernel"):
            assert f"{arch} {kernel}" in proc.stdout, (arch, kernel)
    conv = [line for line in proc.stdout.splitlines() if line.startswith("ok") and "_conv_bn_relu_pool_kernel[" in line]
    # bf16 runs on tensor cores: wgmma on sm_90, mma.sync on sm_80, with cp.async feeding the pipeline
    assert any("sm_90" in line and "wgmma=" in line and "cp.async=" in line for line in conv), conv
    assert any("sm_80" in line and "mma.sync=" in line and "cp.async=" in line for line in conv), conv
    fp64 = [line for line in proc.stdout.splitlines() if "ACC=fp64" in line]
    assert fp64 and all("fp64-clean" in line for line in fp64)
    assert any("(f64 divide)" in line and "_sum_rows_kernel" in line for line in fp64)  # the mean, in float64
    assert any("(f64 divide)" in line and "_pool_bwd_kernel" in line for line in fp64)  # grad_gap / P


@pytest.mark.needs_cuda
def test_triton_runs_compiled_on_a_gpu():
    """On a GPU the Triton ops must compile (tests/conftest.py chooses the interpreter only without CUDA)."""
    import triton

    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    from resnest_fast.kernels import splat
    from resnest_fast.ops import splat_pool

    assert isinstance(splat._pool_partial_kernel, triton.runtime.jit.JITFunction)
    x = torch.randn(2, 8, 16, 16, device="cuda")
    gap = splat_pool(x, None, None, 2, True, backend="triton")
    torch.testing.assert_close(gap, splat_pool(x, None, None, 2, True, backend="reference"))
    device = torch.cuda.current_device()
    assert len(splat._pool_partial_kernel.device_caches[device][0]) > 0  # a compiled binary in the JIT cache


@pytest.mark.needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launch_on_x_device_not_the_current_one():
    from resnest_fast.ops import splat_pool

    x = torch.randn(2, 8, 16, 16, device="cuda:1")
    with torch.cuda.device(0):
        gap = splat_pool(x, None, None, 2, True, backend="triton")
    assert gap.device == x.device
    torch.testing.assert_close(gap, splat_pool(x, None, None, 2, True, backend="reference"))
