"""The fused ops of every backend available here against the pure-PyTorch reference, which is itself checked
against mmseg's formulation (tests/nn checks the module against mmseg's real module)."""
import os

import pytest
import torch

import resnest_fast
from resnest_fast import _extension as ext
from resnest_fast.backend import available_backends
from resnest_fast.op_rules import kernel_layout
from resnest_fast.ops import (
    splat_combine,
    splat_combine_reference,
    splat_pool,
    splat_pool_reference,
)
from resnest_fast.testing.tolerances import assert_close_to_reference

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "reference"]
# Triton under the interpreter is slow: its own file (tests/kernels) sweeps it; here it joins the smaller sweeps.
FAST_BACKENDS = [b for b in KERNEL_BACKENDS if b != "triton"]
RADIX_GROUPS = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
SHAPES = [(2, 8, 7, 9), (1, 4, 1, 1), (3, 16, 5, 4)]  # (B, C, H, W): odd sizes on purpose
LAYOUTS = ["contiguous", "channels_last", "non_contiguous"]
FLAGS = [(True, True), (True, False), (False, True), (False, False)]  # (affine, relu)


def test_extension_was_built_where_required():
    """test.sh sets RESNEST_FAST_REQUIRE_C=1 so that a broken build fails instead of silently testing the fallback:
    every kernel family the build makes (the CPU ops, Winograd, the training ops; their CUDA versions where a GPU
    is present) must be registered, or their tests would turn into skips."""
    if os.environ.get("RESNEST_FAST_REQUIRE_C") != "1":
        pytest.skip("RESNEST_FAST_REQUIRE_C is not set")
    from resnest_fast.ops.winograd import HAS_WINOGRAD_KERNELS

    assert ext.HAS_C, f"resnest_fast._C did not import: {ext.C_IMPORT_ERROR}"
    missing = [name for name, built in [
        ("CPU split-attention kernels", ext.HAS_CPU_KERNELS),
        ("CPU Winograd kernel", HAS_WINOGRAD_KERNELS),
        ("CPU training kernels (splat_bn_stats, splat_backward_reduce, splat_backward_input)",
         ext.TRAINING_KERNELS["cpu"]),
    ] + ([("CUDA split-attention kernels", ext.HAS_CUDA_KERNELS),
          ("CUDA training kernels", ext.TRAINING_KERNELS["cuda"])] if torch.cuda.is_available() else [])
        if not built]
    assert not missing, f"RESNEST_FAST_REQUIRE_C=1 but resnest_fast._C lacks: {', '.join(missing)}"


def test_mmseg_reference_is_there_where_required():
    """test.sh also sets RESNEST_FAST_REQUIRE_MMSEG=1 (it installs mmseg): the parity tests must not skip there.
    The CUDA build check reruns these tests in a venv without mmseg, with RESNEST_FAST_REQUIRE_C=1 only."""
    if os.environ.get("RESNEST_FAST_REQUIRE_MMSEG") != "1":
        pytest.skip("RESNEST_FAST_REQUIRE_MMSEG is not set")
    from resnest_fast.testing.mmseg_reference import INSTALL_HINT, mmseg_available

    assert mmseg_available(), f"RESNEST_FAST_REQUIRE_MMSEG=1 but the mmseg reference is missing: {INSTALL_HINT}"


@pytest.mark.parametrize("env,fails", [({}, False), ({"RESNEST_FAST_REQUIRE_C": "1"}, False),
                                       ({"RESNEST_FAST_REQUIRE_MMSEG": "1"}, True)])
def test_missing_mmseg_fails_where_required(monkeypatch, env, fails):
    """Without mmseg the parity tests skip, except in a run that requires the reference (test.sh:
    RESNEST_FAST_REQUIRE_MMSEG=1), where they fail; requiring the kernels alone does not require mmseg."""
    import tests.mmseg_reference as reference

    for name in reference.REQUIRING:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(reference, "mmseg_available", lambda: False)
    outcome = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(outcome, match="mmseg|mmcv|pip"):
        reference.skip_without_mmseg()


def make_inputs(shape, radix, layout, dtype, affine, scale_dtype=None, requires_grad=True):
    b, c, h, w = shape
    x = torch.randn(b, radix * c, h, w, dtype=torch.float64)
    logits = 2 * torch.randn(b, radix * c, dtype=torch.float64)
    scale = (torch.rand(radix * c, dtype=torch.float64) + 0.5) if affine else None
    shift = torch.randn(radix * c, dtype=torch.float64) * 0.5 if affine else None
    sdt = scale_dtype or dtype

    def prep(t, dt):
        return None if t is None else t.to(dt)

    x, logits, scale, shift = prep(x, dtype), prep(logits, dtype), prep(scale, sdt), prep(shift, sdt)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        x = torch.cat([x, x], dim=3)[..., ::2]  # every other column: a strided view
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    tensors = [x, logits, scale, shift]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


def run(backend, x, logits, scale, shift, radix, groups, relu, grad_gap, grad_out):
    gap = splat_pool(x, scale, shift, radix=radix, relu=relu, backend=backend)
    out = splat_combine(x, logits, scale, shift, radix=radix, groups=groups, relu=relu, backend=backend)
    inputs = [t for t in (x, logits, scale, shift) if t is not None]
    grads = torch.autograd.grad((gap * grad_gap).sum() + (out * grad_out).sum(), inputs)
    return [gap, out, *grads]


def compare_with_reference(backend, x, logits, scale, shift, radix, groups, grad_gap, grad_out):
    """Forward and all gradients of `backend` against the reference in the same dtype and in float64
    (resnest_fast/testing/tolerances.py's rule); outputs keep x's dtype and device."""
    got = run(backend, x, logits, scale, shift, radix, groups, True, grad_gap, grad_out)
    same = run("reference", *(detached_copy(t) for t in (x, logits, scale, shift)), radix, groups, True,
               grad_gap, grad_out)
    ref64 = run("reference", *(detached_copy(t, torch.float64) for t in (x, logits, scale, shift)), radix, groups,
                True, grad_gap.double(), grad_out.double())
    for name, g, s, r in zip(names(True), got, same, ref64):
        assert g.dtype == x.dtype and g.device == x.device, f"{name}: {g.dtype} on {g.device}"
        assert_close_to_reference(name, g, s, r)


def detached_copy(t, dtype=None):
    return None if t is None else t.detach().to(dtype or t.dtype).requires_grad_(True)


def names(affine):
    return ["gap", "out", "grad_x", "grad_logits"] + (["grad_scale", "grad_shift"] if affine else [])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("radix,groups", RADIX_GROUPS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine,relu", FLAGS)
def test_forward_and_gradients_fp32(backend, radix, groups, shape, layout, affine, relu):
    x, logits, scale, shift = make_inputs(shape, radix, layout, torch.float32, affine)
    b, c, h, w = shape
    grad_gap, grad_out = torch.randn(b, c), torch.randn(b, c, h, w)
    got = run(backend, x, logits, scale, shift, radix, groups, relu, grad_gap, grad_out)
    ref = run("reference", *(detached_copy(t) for t in (x, logits, scale, shift)), radix, groups, relu,
              grad_gap, grad_out)
    for name, g, r in zip(names(affine), got, ref):
        assert_close_to_reference(name, g, r, r.double())
    # the output-layout contract (fake kernels rely on it): channels_last in, channels_last out; else NCHW
    assert got[1].is_contiguous(memory_format=kernel_layout(x)), (layout, got[1].stride())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("radix,groups", [(1, 1), (2, 1), (4, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forward_and_gradients_low_precision(backend, dtype, radix, groups, layout):
    shape = (2, 16, 7, 9)
    b, c, h, w = shape
    x, logits, scale, shift = make_inputs(shape, radix, layout, dtype, affine=True)
    grad_gap, grad_out = torch.randn(b, c, dtype=dtype), torch.randn(b, c, h, w, dtype=dtype)
    compare_with_reference(backend, x, logits, scale, shift, radix, groups, grad_gap, grad_out)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_scale_with_low_precision_x(backend, dtype):
    """Under autocast bn0's parameters stay float32 while the conv output is half/bfloat16."""
    x, logits, scale, shift = make_inputs((2, 8, 5, 6), 2, "contiguous", dtype, True, scale_dtype=torch.float32)
    grad_gap, grad_out = torch.randn(2, 8, dtype=dtype), torch.randn(2, 8, 5, 6, dtype=dtype)
    got = run(backend, x, logits, scale, shift, 2, 1, True, grad_gap, grad_out)
    ref64 = run("reference", *(detached_copy(t, torch.float64) for t in (x, logits, scale, shift)), 2, 1, True,
                grad_gap.double(), grad_out.double())
    assert got[4].dtype == torch.float32 and got[5].dtype == torch.float32
    for name, g, r in zip(names(True), got, ref64):
        same = r.to(g.dtype)  # rounding the exact answer is the best the dtype can do
        assert_close_to_reference(name, g, same, r)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_output_is_rounded_to_nearest_even(backend, dtype, layout):
    """With equal logits (softmax exactly 1/2) and no affine/ReLU, out = (x0 + x1) / 2 is exact in float32, so the
    kernel's result must be torch's own float32 -> dtype rounding of it, bit for bit: ties to even, NaN kept.
    (The CPU kernels round bfloat16 with their own vectorised code.)"""
    torch.manual_seed(0)
    x = torch.randn(2, 2 * 16, 9, 7).to(dtype)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    logits = torch.zeros(2, 2 * 16, dtype=dtype)
    got = splat_combine(x, logits, radix=2, relu=False, backend=backend)
    x32 = x.float()
    want = ((x32[:, :16] + x32[:, 16:]) * 0.5).to(dtype)
    inexact = want.float() != (x32[:, :16] + x32[:, 16:]) * 0.5
    assert inexact.sum() > 100, "the inputs must exercise rounding"
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    ok = ~want.isnan()
    assert torch.equal(got[ok], want[ok]), f"{(got[ok] != want[ok]).sum()} values rounded differently"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("radix,groups", [(1, 1), (2, 2), (4, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(backend, radix, groups, layout):
    x, logits, scale, shift = make_inputs((2, 4, 3, 5), radix, layout, torch.float64, affine=True)
    assert torch.autograd.gradcheck(
        lambda *t: splat_pool(t[0], t[1], t[2], radix=radix, backend=backend), (x, scale, shift)
    )
    assert torch.autograd.gradcheck(
        lambda *t: splat_combine(*t, radix=radix, groups=groups, backend=backend), (x, logits, scale, shift)
    )


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_second_derivatives_float64(backend, layout):
    """create_graph=True (double backward, gradient penalties) through the kernels' autograd, checked by finite
    differences, through pool -> attention -> combine (each op's inputs, and logits that depend on x too). The backward
    kernels have no autograd of their own: before, the second derivative came out as if their outputs were
    constants (100 % off), with only torch's warning."""
    radix, groups = 2, 2
    x, _, scale, shift = make_inputs((2, 4, 3, 5), radix, layout, torch.float64, affine=True)
    w = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)

    def chain(x, w, scale, shift):
        gap = splat_pool(x, scale, shift, radix=radix, backend=backend)
        return splat_combine(x, gap @ w.t(), scale, shift, radix=radix, groups=groups, backend=backend)

    assert torch.autograd.gradgradcheck(chain, (x, w, scale, shift))


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not installed")
def test_second_derivatives_of_the_triton_ops_are_the_references():
    """The Triton ops share the C++ ops' autograd registration: one double backward through pool -> attention ->
    combine against the same through the pure-PyTorch reference (finite differences are too slow under the
    interpreter)."""
    radix, groups = 2, 2
    x, _, scale, shift = make_inputs((2, 4, 3, 5), radix, "contiguous", torch.float64, affine=True)
    w = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    results = {}
    for backend in ("triton", "reference"):
        gap = splat_pool(x, scale, shift, radix=radix, backend=backend)
        out = splat_combine(x, gap @ w.t(), scale, shift, radix=radix, groups=groups, backend=backend)
        first = torch.autograd.grad((out * out).sum(), (x, w, scale), create_graph=True)
        results[backend] = torch.autograd.grad(sum((g * g).sum() for g in first), (x, w, scale, shift))
    for name, got, want in zip(("x", "w", "scale", "shift"), results["triton"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"d2/d{n}: {m}")


def test_reference_is_mmseg_formulation():
    """The reference against mmseg's own code path: bn0 -> relu -> view/sum -> adaptive pool, and rSoftMax ->
    mul -> sum (transcribed from mmseg.models.backbones.resnest, here with groups > 1 where layouts differ)."""
    torch.manual_seed(1)
    b, radix, groups, c, h, w = 2, 4, 2, 6, 5, 7
    y = torch.randn(b, radix * c, h, w, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(radix * c).double().eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    logits = torch.randn(b, radix * c, dtype=torch.float64)
    act = torch.relu(bn(y))
    splits = act.view(b, radix, -1, h, w)
    gap = torch.nn.functional.adaptive_avg_pool2d(splits.sum(dim=1), 1).flatten(1)
    att = logits.view(b, groups, radix, -1).transpose(1, 2).softmax(dim=1).reshape(b, -1)
    out = torch.sum(att.view(b, radix, -1, 1, 1) * splits, dim=1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    torch.testing.assert_close(splat_pool_reference(y, scale, shift, radix, True), gap)
    torch.testing.assert_close(splat_combine_reference(y, logits, scale, shift, radix, groups, True), out)


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False])
def test_opcheck(layout, affine):
    ops = torch.ops.resnest_fast
    radix, groups = 4, 2
    x, logits, scale, shift = make_inputs((2, 4, 3, 5), radix, layout, torch.float32, affine)
    args_pool = (x, scale, shift, radix, True)
    args_combine = (x, logits, scale, shift, radix, groups, True)
    torch.library.opcheck(ops.splat_pool.default, args_pool)
    torch.library.opcheck(ops.splat_combine.default, args_combine)
    grad_gap, grad_out = torch.randn(2, 4), torch.randn(2, 4, 3, 5)
    detached = [None if t is None else t.detach() for t in (x, logits, scale, shift)]
    torch.library.opcheck(ops.splat_pool_backward.default, (grad_gap, detached[0], *detached[2:], radix, True))
    torch.library.opcheck(ops.splat_combine_backward.default, (grad_out, *detached, radix, groups, True))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    radix, groups = 2, 2

    def f(x, logits, scale, shift):
        gap = splat_pool(x, scale, shift, radix=radix, backend=backend)
        out = splat_combine(x, logits + gap.repeat(1, radix), scale, shift, radix=radix, groups=groups,
                            backend=backend)
        return out.square().sum()

    inputs = make_inputs((2, 8, 5, 6), radix, "contiguous", torch.float32, True)
    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    ref_inputs = [detached_copy(t) for t in inputs]
    ref_loss = f(*ref_inputs)
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs)
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_empty_batch(backend):
    x, logits, scale, shift = make_inputs((0, 4, 3, 5), 2, "contiguous", torch.float32, True)
    gap = splat_pool(x, scale, shift, radix=2, backend=backend)
    out = splat_combine(x, logits, scale, shift, radix=2, groups=2, backend=backend)
    assert gap.shape == (0, 4) and out.shape == (0, 4, 3, 5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_gradient_is_masked_like_reference(backend, layout, bad):
    """relu's backward selects (torch's threshold_backward): an inf or NaN upstream gradient gives 0 wherever relu
    is off, where multiplying by a 0/1 mask would give 0*inf = NaN. One bad value of grad_gap reaches every
    position of one channel, one of grad_out every split at one position."""
    radix, groups = 2, 1
    x, logits, scale, shift = make_inputs((2, 8, 3, 3), radix, layout, torch.float32, True)
    grad_gap = torch.randn(2, 8)
    grad_gap[0, 0] = bad
    grad_out = torch.randn(2, 8, 3, 3)
    grad_out[1, 2, :, 1] = bad
    inputs = (x, logits, scale, shift)
    every = slice(None)
    cases = [  # (op, its upstream gradient, the entries of grad_x the bad value reaches)
        (lambda be, t: splat_pool(t[0], t[2], t[3], radix=radix, backend=be), grad_gap, (0, [0, 8], every, every)),
        (lambda be, t: splat_combine(*t, radix=radix, groups=groups, backend=be), grad_out, (1, [2, 10], every, 1)),
    ]
    for op, grad, reached in cases:
        ref_inputs = [detached_copy(t) for t in inputs]
        ref = torch.autograd.grad(op("reference", ref_inputs), ref_inputs, grad, allow_unused=True)
        got = torch.autograd.grad(op(backend, inputs), inputs, grad, allow_unused=True)
        assert (ref[0][reached] == 0).any(), "relu is on wherever the bad value goes: the test lost its point"
        for name, g, r in zip(["grad_x", "grad_logits", "grad_scale", "grad_shift"], got, ref):
            if r is not None:
                torch.testing.assert_close(g, r, equal_nan=True, msg=lambda m: f"{backend} {name}: {m}")


BAD_INPUTS = [
    # (description, kwargs overrides, error type, words the message must contain)
    ("x of rank 3", dict(x=torch.randn(2, 8, 5)), ValueError, ["x", "4-D"]),
    ("channels not divisible by radix", dict(x=torch.randn(2, 7, 3, 3)), ValueError, ["x.shape[1]", "radix"]),
    ("channels not divisible by radix*groups", dict(groups=3), ValueError, ["radix*groups"]),
    ("logits of the wrong size", dict(logits=torch.randn(2, 6)), ValueError, ["logits", "shape"]),
    ("logits of another dtype", dict(logits=torch.randn(2, 8, dtype=torch.float64)), TypeError, ["logits", "dtype"]),
    ("logits on another device", dict(logits=torch.randn(2, 8, device="meta")), ValueError, ["logits", "meta"]),
    ("scale without shift", dict(shift=None), ValueError, ["scale", "shift"]),
    ("scale of the wrong size", dict(scale=torch.ones(3), shift=torch.ones(3)), ValueError, ["scale", "shape"]),
    ("scale of another dtype", dict(scale=torch.ones(8, dtype=torch.float64), shift=torch.ones(8, dtype=torch.float64)),
     TypeError, ["scale", "dtype"]),
    ("radix 0", dict(radix=0), ValueError, ["radix"]),
    ("unknown backend", dict(backend="tpu"), ValueError, ["backend"]),
    ("integer x", dict(x=torch.ones(2, 8, 3, 3, dtype=torch.int32)), TypeError, ["x", "floating"]),
]


@pytest.mark.parametrize("desc,override,error,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_argument(desc, override, error, words):
    args = dict(x=torch.randn(2, 8, 3, 3), logits=torch.randn(2, 8), scale=torch.ones(8), shift=torch.zeros(8),
                radix=2, groups=2, backend="reference")
    args.update(override)
    with pytest.raises(error) as info:
        splat_combine(**args)
    for word in words:
        assert word in str(info.value), f"{desc}: {word!r} not in {info.value}"


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
@pytest.mark.parametrize(
    "args,words",
    [
        ((torch.randn(2, 8, 3), torch.randn(2, 8), None, None, 2, 1, True), ["x", "4-D"]),
        ((torch.randn(2, 8, 3, 3), torch.randn(2, 6), None, None, 2, 1, True), ["logits", "shape"]),
        ((torch.randn(2, 8, 3, 3), torch.randn(2, 8), None, None, 2, 3, True), ["radix*groups"]),
        ((torch.randn(2, 8, 3, 3), torch.randn(2, 8), torch.ones(8), None, 2, 1, True), ["scale", "shift"]),
        ((torch.randn(2, 8, 3, 3), torch.randn(2, 8).double(), None, None, 2, 1, True), ["logits", "dtype"]),
    ],
)
def test_cpp_checks_name_the_argument(args, words):
    """The C++ ops check their input too (they can be called directly through torch.ops)."""
    with pytest.raises(RuntimeError) as info:
        torch.ops.resnest_fast.splat_combine(*args)
    for word in words:
        assert word in str(info.value)


@pytest.mark.skipif(not ext.TRAINING_KERNELS["cpu"], reason="resnest_fast._C was built without the training kernels")
@pytest.mark.parametrize("bad", ["coef_a", "coef_b"])
def test_cpp_backward_input_names_the_coefficients(bad):
    """splat_backward_input checks coef_a and coef_b with the scale/shift rule, under their own names."""
    x, logits = torch.randn(2, 8, 3, 3), torch.randn(2, 8)
    coefs = {"coef_a": torch.ones(8), "coef_b": torch.zeros(8)}
    coefs[bad] = torch.ones(3)
    with pytest.raises(RuntimeError, match=rf"{bad} must have shape \(radix\*C,\)"):
        torch.ops.resnest_fast.splat_backward_input(torch.randn(2, 4, 3, 3), torch.randn(2, 4), x, logits,
                                                    torch.ones(8), torch.zeros(8), coefs["coef_a"], coefs["coef_b"],
                                                    2, 1)


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
def test_radix_bound_is_the_kernels():
    """op_rules.MAX_RADIX and csrc's kMaxRadix are one bound: the C++ op takes MAX_RADIX and names the same range
    when it refuses MAX_RADIX + 1."""
    from resnest_fast.op_rules import MAX_RADIX

    x = torch.randn(1, 2 * MAX_RADIX, 2, 2)
    torch.testing.assert_close(torch.ops.resnest_fast.splat_pool(x, None, None, MAX_RADIX, True),
                               splat_pool_reference(x, None, None, MAX_RADIX, True))
    x = torch.randn(1, MAX_RADIX + 1, 2, 2)
    with pytest.raises(RuntimeError, match=rf"radix must be in \[1, {MAX_RADIX}\]"):
        torch.ops.resnest_fast.splat_pool(x, None, None, MAX_RADIX + 1, True)
    with pytest.raises(ValueError, match=rf"\[1, {MAX_RADIX}\]"):
        splat_pool(x, None, None, MAX_RADIX + 1, True)


def test_backend_selection():
    assert resnest_fast.resolve_backend("reference", torch.device("cpu")) == "reference"
    expected = "cpu" if ext.HAS_CPU_KERNELS else "reference"
    assert resnest_fast.resolve_backend("auto", torch.device("cpu")) == expected
    # what the build lacks comes first, since no device can help then; with CUDA kernels, the device is wrong
    if ext.HAS_CUDA_KERNELS:
        with pytest.raises(ValueError, match="runs on cuda tensors, but the input is on cpu"):
            resnest_fast.resolve_backend("cuda", torch.device("cpu"))
    else:
        with pytest.raises(RuntimeError, match=r"^backend='cuda' is not available: resnest_fast\._C was (not built|"
                                               r"built without cuda kernels)"):
            resnest_fast.resolve_backend("cuda", torch.device("cpu"))
    previous = resnest_fast.set_default_backend("reference")
    try:
        assert resnest_fast.resolve_backend(None, torch.device("cpu")) == "reference"
    finally:
        resnest_fast.set_default_backend(previous)
    with pytest.raises(ValueError, match="backend"):
        resnest_fast.set_default_backend("fastest")


def test_all_combinations_are_distinct_cases():
    # groups > 1 must change the result, or a kernel reading the logits in the feature layout would pass
    x, logits, scale, shift = make_inputs((1, 4, 2, 2), 2, "contiguous", torch.float64, True, requires_grad=False)
    a = splat_combine_reference(x, logits, scale, shift, 2, 1, True)
    b = splat_combine_reference(x, logits, scale, shift, 2, 2, True)
    assert not torch.allclose(a, b)
    # and every layout is what its name says: the strided case must reach the kernels strided
    made = {layout: make_inputs((2, 4, 3, 5), 2, layout, torch.float32, True)[0] for layout in LAYOUTS}
    assert made["contiguous"].is_contiguous()
    assert made["channels_last"].is_contiguous(memory_format=torch.channels_last)
    assert not made["channels_last"].is_contiguous()
    strided = made["non_contiguous"]
    assert not strided.is_contiguous() and not strided.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 3, 1, 1), (3, 5, 4, 1)])
def test_bn_stats_against_float64(backend, dtype, layout, shape):
    """bn0's batch statistics against torch.var_mean in float64, on data whose mean dwarfs its spread (where
    E[x^2] - E[x]^2 would lose every digit)."""
    from resnest_fast.ops import splat_bn_stats

    b, k, h, w = shape
    x = (torch.randn(b, k, h, w, dtype=torch.float64) * 0.5 + 100.0).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        x = torch.cat([x, x], dim=3)[..., ::2]
    var, mean = splat_bn_stats(x, backend=backend)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mean.double(), mean64, rtol=tol, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=tol * 100, atol=tol * 100 * var64.abs().max().item())


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bn_stats_opcheck(layout):
    x = torch.randn(2, 6, 5, 3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.resnest_fast.splat_bn_stats.default, (x,))


def test_bn_stats_bad_input():
    from resnest_fast.ops import splat_bn_stats

    with pytest.raises(ValueError, match="4-D"):
        splat_bn_stats(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="one value per channel"):
        splat_bn_stats(torch.randn(0, 3, 4, 4))


@pytest.mark.filterwarnings("ignore:var_mean.*degrees of freedom")  # torch's, on an empty reduction
@pytest.mark.parametrize("backend", ["reference"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bn_stats_without_channels(backend, dtype):
    """No channel at all (K == 0) is empty statistics, as torch.var_mean gives."""
    from resnest_fast.ops import splat_bn_stats

    var, mean = splat_bn_stats(torch.randn(2, 0, 3, 3, dtype=dtype), backend=backend)
    assert var.shape == mean.shape == (0,) and var.dtype == mean.dtype == dtype


@pytest.mark.parametrize("backend", ["reference"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bn_stats_of_huge_means(backend, layout):
    """Means beyond sqrt(fp32 max) ~ 1.8e19, whose square overflows fp32: constant channels have variance 0, a
    channel with spread its float64 variance; no NaN, no inf."""
    from resnest_fast.ops import splat_bn_stats

    x = torch.full((2, 3, 4, 4), 1e20, dtype=torch.float64)
    x[:, 1] = -3e25
    x[:, 2] = 1e20 * (1 + 1e-3 * torch.randn(2, 4, 4, dtype=torch.float64))
    x = x.float()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    var, mean = splat_bn_stats(x, backend=backend)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert torch.isfinite(var).all() and torch.isfinite(mean).all(), (var, mean)
    assert var[0] == 0 and var[1] == 0
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-4, atol=0)


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
@pytest.mark.parametrize("radix,groups", [(1, 1), (2, 1), (4, 2), (2, 2)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_backward_passes(radix, groups, layout, dtype):
    """The module's two backward passes against their references (which are built on splat_combine_reference's
    autograd), in both layouts, groups > 1 included."""
    from resnest_fast.ops import splat_backward_input_reference, splat_backward_reduce_reference

    shape = (2, 8, 7, 9)
    b, c, h, w = shape
    x, logits, scale, shift = make_inputs(shape, radix, layout, dtype, True, requires_grad=False)
    grad_out = torch.randn(b, c, h, w, dtype=dtype)
    if layout == "channels_last":
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    got = torch.ops.resnest_fast.splat_backward_reduce(grad_out, x, logits, scale, shift, radix, groups)
    ref = splat_backward_reduce_reference(grad_out, x, logits, scale, shift, radix, groups)
    for name, g, r in zip(["grad_logits", "grad_scale", "grad_shift", "mx", "m"], got, ref):
        assert_close_to_reference(name, g, r.to(g.dtype), r.double())
    grad_gap = torch.randn(b, c, dtype=dtype)
    coef_a, coef_b = torch.randn(radix * c, dtype=dtype), torch.randn(radix * c, dtype=dtype)
    got = torch.ops.resnest_fast.splat_backward_input(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b,
                                                      radix, groups)
    ref = splat_backward_input_reference(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups)
    assert_close_to_reference("grad_x", got, ref, ref.double())
    torch.library.opcheck(torch.ops.resnest_fast.splat_backward_reduce.default,
                          (grad_out, x, logits, scale, shift, radix, groups))
    torch.library.opcheck(torch.ops.resnest_fast.splat_backward_input.default,
                          (grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups))


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
def test_fused_backward_entry_points_dispatch():
    """resnest_fast.ops.splat_backward_{reduce,input}: the kernels for backend="cpu", the reference for
    backend="reference", and the ops' input checks first."""
    from resnest_fast.ops import (
        splat_backward_input,
        splat_backward_input_reference,
        splat_backward_reduce,
        splat_backward_reduce_reference,
    )

    radix, groups = 4, 2
    x, logits, scale, shift = make_inputs((2, 4, 3, 5), radix, "channels_last", torch.float64, True,
                                          requires_grad=False)
    grad_out, grad_gap = torch.randn(2, 4, 3, 5, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    coef_a, coef_b = torch.randn(radix * 4, dtype=torch.float64), torch.randn(radix * 4, dtype=torch.float64)
    reduce_args = (grad_out, x, logits, scale, shift, radix, groups)
    input_args = (grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups)
    for got, want in zip(splat_backward_reduce(*reduce_args, backend="cpu"),
                         torch.ops.resnest_fast.splat_backward_reduce(*reduce_args)):
        assert torch.equal(got, want)
    for got, want in zip(splat_backward_reduce(*reduce_args, backend="reference"),
                         splat_backward_reduce_reference(*reduce_args)):
        assert torch.equal(got, want)
    assert torch.equal(splat_backward_input(*input_args, backend="cpu"),
                       torch.ops.resnest_fast.splat_backward_input(*input_args))
    assert torch.equal(splat_backward_input(*input_args, backend="reference"),
                       splat_backward_input_reference(*input_args))
    with pytest.raises(ValueError, match="radix"):
        splat_backward_reduce(grad_out, x, logits, scale, shift, 3, groups, backend="cpu")
