"""`import resnest_fast` must work where the extension or Triton is missing, with one warning naming what is
missing, and the reference must then run. Checked in a fresh interpreter where both imports are blocked."""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    sys.modules["resnest_fast._C"] = None   # import fails as if the extension had not been built
    sys.modules["triton"] = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import resnest_fast
    ours = [w for w in caught if "resnest_fast" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "resnest_fast._C" in str(ours[0].message), ours[0].message
    import torch
    from resnest_fast import _extension as ext
    assert not ext.HAS_C and not ext.HAS_TRITON
    assert resnest_fast.resolve_backend(None, torch.device("cpu")) == "reference"
    from resnest_fast.info import UNFUSED_TRAINING, build_info
    assert build_info()["trains"]["cpu"] == UNFUSED_TRAINING
    for name in ("cpu", "triton"):
        try:
            resnest_fast.resolve_backend(name, torch.device("cpu"))
            raise AssertionError(name + " should not resolve")
        except RuntimeError as exc:
            assert ("not built" in str(exc)) or ("not installed" in str(exc)), exc
    m = resnest_fast.nn.SplitAttentionConv2d(8, 8, 3, padding=1).eval()
    out = m(torch.randn(2, 8, 5, 5))
    assert out.shape == (2, 8, 5, 5)
    from resnest_fast.ops import winograd
    assert not winograd.HAS_WINOGRAD_KERNELS
    conv = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU()).eval()
    fast = resnest_fast.optimize_for_inference(conv)  # no Winograd without the kernel: oneDNN / F.conv2d
    assert fast[0].winograd_weight is None
    x = torch.randn(1, 64, 6, 6)
    assert (fast(x) - conv(x)).abs().max().item() < 1e-4
    print("fallback OK")
    """
)


def test_import_without_extension_or_triton():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fallback OK" in proc.stdout


@pytest.mark.parametrize("backend", [None, "triton"])
def test_info_command_prints_what_runs(backend):
    """What runs, and which kernels train: the C++ CPU kernels where built; the Triton ones when Triton is the
    backend (its interpreter here), which once trained through the reference."""
    import json
    import os

    from resnest_fast import _extension as ext
    from resnest_fast.backend import available_backends

    env = dict(os.environ)
    if backend is not None:
        if "triton" not in available_backends("cpu"):
            pytest.skip("Triton's interpreter cannot run here")
        env.update(RESNEST_FAST_BACKEND=backend, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "resnest_fast", "info", "--json"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("extension_C", "cpu_kernels", "cuda_kernels", "winograd_cpu_kernel", "triton_installed", "runs",
                "trains", "default_backend"):
        assert key in info
    if backend == "triton":
        assert info["runs"]["cpu"] == info["trains"]["cpu"] == "triton"
    else:
        assert info["runs"]["cpu"] in ("cpu", "reference")
        trains_cpu = info["runs"]["cpu"] == "cpu" and ext.TRAINING_KERNELS["cpu"]
        assert info["trains"]["cpu"] == ("cpu" if trains_cpu else "reference (torch.var_mean and op-level autograd)")


@pytest.mark.parametrize("value", ["reference", "bogus"])
def test_backend_environment_variable(value):
    code = "import torch, resnest_fast; print(resnest_fast.resolve_backend(None, torch.device('cpu')))"
    env = {**__import__("os").environ, "RESNEST_FAST_BACKEND": value}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if value == "bogus":
        assert proc.returncode != 0 and "RESNEST_FAST_BACKEND" in proc.stderr
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == "reference", proc.stderr


def test_import_leaves_the_compiler_stack_out():
    """`import resnest_fast` must not pull in torch._dynamo or Inductor (a second and 140 MiB of resident memory
    in a process that never compiles: what a deployment that only runs the optimised model pays). Triton is
    imported where its kernels can run (CUDA, or its interpreter), by design."""
    code = ("import sys, resnest_fast, resnest_fast.optimize, resnest_fast.segmentation\n"
            "print(','.join(m for m in ('torch._dynamo', 'torch._inductor', 'sympy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at import time: {proc.stdout.strip()}"


# (triton, numpy, whether Triton's interpreter runs the kernels): measured with tests/kernels/test_splat_triton.py
INTERPRETER_RUNS = [("3.6.0", "2.4.6", False), ("3.6.0", "2.5.5", False), ("3.6.0", "2.3.5", True),
                    ("3.7.1", "2.4.6", True), ("3.8.0", "2.4.6", True)]


@pytest.mark.parametrize("triton_version, numpy_version, runs", INTERPRETER_RUNS)
def test_the_triton_backend_is_not_offered_on_cpu_where_its_interpreter_cannot_run(
        monkeypatch, triton_version, numpy_version, runs):
    import torch
    from torch.torch_version import TorchVersion

    from resnest_fast import _extension as ext
    from resnest_fast.backend import available_backends, resolve_backend

    versions = {"triton": TorchVersion(triton_version), "numpy": TorchVersion(numpy_version)}
    monkeypatch.setattr(ext, "HAS_TRITON", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(ext, "installed_version", versions.get)
    problem = ext.triton_interpreter_problem()
    assert (problem is None) == runs
    assert ("triton" in available_backends("cpu")) == runs
    if runs:
        assert resolve_backend("triton", torch.device("cpu")) == "triton"
    else:
        assert f"Triton {triton_version}" in problem and "numpy<2.4" in problem and "triton>=3.7" in problem
        refusal = f"backend='triton' is not available on CPU tensors: Triton {triton_version}"
        with pytest.raises(RuntimeError, match=refusal):
            resolve_backend("triton", torch.device("cpu"))
