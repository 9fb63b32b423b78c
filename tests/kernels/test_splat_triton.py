"""Triton split-attention ops (resnest_fast/kernels/splat.py) against the pure-PyTorch reference.

Without a GPU the kernels run through Triton's interpreter on CPU tensors (TRITON_INTERPRET must be set before triton
and resnest_fast are imported: tests/conftest.py does it); with one, the tensors are put on it and the kernels are
compiled, never interpreted.
Low-precision rule (flash-attention): |triton - ref_hi| <= 2 * |ref_same_dtype - ref_hi| + floor, maxima over the
tensor, with ref_hi the reference in float64 (for float32) or float32 (for float16/bfloat16) on the same values,
and floor = atol + rtol * max|ref_hi| from TOLERANCES.
"""
import itertools
import os

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py, for a run of this file alone
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from resnest_fast import _extension as ext  # noqa: E402

if not torch.cuda.is_available() and ext.triton_interpreter_problem():
    pytest.skip(ext.triton_interpreter_problem(), allow_module_level=True)

import resnest_fast.kernels.splat as splat_triton  # noqa: E402
from resnest_fast.op_rules import kernel_layout  # noqa: E402
from resnest_fast.ops import (  # noqa: E402
    splat_backward_input,
    splat_backward_reduce,
    splat_bn_stats,
    splat_combine,
    splat_pool,
)
from resnest_fast.ops.registrations import register_triton_ops  # noqa: E402

# registers the ops even if resnest_fast was imported before TRITON_INTERPRET was set
assert register_triton_ops()

OPS = torch.ops.resnest_fast
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# dtype -> (atol, rtol) of the floor, and the dtype of the high-precision reference.
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.bfloat16: (1e-3, 8e-3),
    torch.float16: (1e-4, 1e-3),
}
HIGH = {torch.float32: torch.float64, torch.bfloat16: torch.float32, torch.float16: torch.float32}

RADIX_GROUPS = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
LAYOUTS = ["contiguous", "channels_last", "sliced"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The cheap axes cycle through their 16 combinations along the product of the structural ones above.
MINOR = list(itertools.product([1, 2], [(7, 9), (1, 1)], [True, False], [True, False]))  # B, (H, W), affine, relu
C = 6  # channels per split: C/groups = 3 is odd, and C is not a power of two (masked tiles)


def _cases():
    cases = []
    for i, ((radix, groups), layout, dtype) in enumerate(itertools.product(RADIX_GROUPS, LAYOUTS, DTYPES)):
        b, hw, affine, relu = MINOR[(5 * i) % len(MINOR)]
        # scale/shift in float32 (bn0 folded) for half of the low-precision cases, else in x's dtype
        param_dtype = torch.float32 if (i // 3) % 2 else dtype
        name = (
            f"r{radix}g{groups}-{str(dtype)[6:]}-{layout}-B{b}-{hw[0]}x{hw[1]}"
            f"-{'affine' if affine else 'noaffine'}{'-f32params' if affine and param_dtype != dtype else ''}"
            f"-{'relu' if relu else 'norelu'}"
        )
        cases.append(pytest.param(radix, groups, layout, dtype, b, hw, affine, relu, param_dtype, id=name))
    return cases


CASES = _cases()


def _make_x(b, rc, hw, layout, dtype, gen):
    h, w = hw
    if layout == "sliced":  # every other column of a wider tensor: dense in neither layout
        return torch.randn(b, rc, h, 2 * w, generator=gen).to(DEVICE, dtype)[..., ::2]
    x = torch.randn(b, rc, h, w, generator=gen).to(DEVICE, dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _inputs(radix, layout, dtype, b, hw, affine, param_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rc = radix * C
    x = _make_x(b, rc, hw, layout, dtype, gen)
    if layout == "sliced":
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    ins = {
        "x": x,
        "logits": (2 * torch.randn(b, rc, generator=gen)).to(dtype),
        "scale": (1 + 0.5 * torch.randn(rc, generator=gen)).to(param_dtype) if affine else None,
        "shift": (0.5 * torch.randn(rc, generator=gen)).to(param_dtype) if affine else None,
        "grad_gap": torch.randn(b, C, generator=gen).to(dtype),
        "grad_out": torch.randn(b, C, *hw, generator=gen).to(dtype),
    }
    ins = {k: None if v is None or k == "x" else v.to(DEVICE) for k, v in ins.items()} | {"x": x}
    if layout == "sliced":  # strided logits and affine parameters too
        for name in ("logits", "scale", "shift"):
            if ins[name] is not None:
                ins[name] = torch.stack([ins[name], torch.zeros_like(ins[name])], -1)[..., 0]
    return ins


def _cast(ins, dtype):
    return {k: None if v is None else v.to(dtype) for k, v in ins.items()}


def _leaves(ins, names):
    """Fresh leaves that require grad, with the very strides of the inputs (sliced ones stay non-dense)."""
    out = []
    for n in names:
        t = ins[n]
        if t is not None:
            t = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t).requires_grad_()
        out.append(t)
    return out


def _run_pool(ins, radix, relu, backend):
    x, scale, shift = _leaves(ins, ["x", "scale", "shift"])
    gap = splat_pool(x, scale, shift, radix, relu, backend=backend)
    wrt = [t for t in (x, scale, shift) if t is not None]
    grads = torch.autograd.grad(gap, wrt, ins["grad_gap"])
    names = ["gap", "grad_x"] + (["grad_scale", "grad_shift"] if scale is not None else [])
    return dict(zip(names, (gap, *grads)))


def _run_combine(ins, radix, groups, relu, backend):
    x, logits, scale, shift = _leaves(ins, ["x", "logits", "scale", "shift"])
    out = splat_combine(x, logits, scale, shift, radix, groups, relu, backend=backend)
    wrt = [t for t in (x, logits, scale, shift) if t is not None]
    grads = torch.autograd.grad(out, wrt, ins["grad_out"])
    names = ["out", "grad_x", "grad_logits"] + (["grad_scale", "grad_shift"] if scale is not None else [])
    return dict(zip(names, (out, *grads)))


def _run_training(ins, radix, groups, backend):
    """The module's fused backward passes (bn0 and relu on): splat_backward_reduce, then splat_backward_input with
    the batch statistics' gradient terms coef_a, coef_b (drawn here, in scale's dtype)."""
    x, logits, scale, shift, go, gg = (ins[k] for k in ("x", "logits", "scale", "shift", "grad_out", "grad_gap"))
    gen = torch.Generator().manual_seed(7)
    coef_a, coef_b = (0.1 * torch.randn(scale.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    coef_a, coef_b = coef_a.to(DEVICE, scale.dtype), coef_b.to(DEVICE, scale.dtype)
    names = ["grad_logits", "grad_scale", "grad_shift", "mx", "m"]
    out = dict(zip(names, splat_backward_reduce(go, x, logits, scale, shift, radix, groups, backend=backend)))
    out["grad_x"] = splat_backward_input(go, gg, x, logits, scale, shift, coef_a, coef_b, radix, groups,
                                         backend=backend)
    return out


def _assert_close_to_reference(run, ins, dtype):
    """run(inputs, backend) -> {name: tensor}; checks the Triton results against the references by the rule."""
    atol, rtol = TOLERANCES[dtype]
    got = run(ins, "triton")
    same = run(ins, "reference")
    high = run(_cast(ins, HIGH[dtype]), "reference")
    assert got.keys() == high.keys()
    for name in got:
        assert got[name].dtype == same[name].dtype, f"{name}: dtype {got[name].dtype}, expected {same[name].dtype}"
        assert got[name].shape == high[name].shape, name
        ref = high[name].double()
        err = (got[name].double() - ref).abs().max().item()
        ref_err = (same[name].double() - ref).abs().max().item()
        bound = 2 * ref_err + atol + rtol * ref.abs().max().item()
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (reference in {dtype}: {ref_err:.3g})"


@pytest.mark.parametrize("radix, groups, layout, dtype, b, hw, affine, relu, param_dtype", CASES)
def test_splat_pool_matches_reference(radix, groups, layout, dtype, b, hw, affine, relu, param_dtype):
    ins = _inputs(radix, layout, dtype, b, hw, affine, param_dtype)
    _assert_close_to_reference(lambda i, be: _run_pool(i, radix, relu, be), ins, dtype)


@pytest.mark.parametrize("radix, groups, layout, dtype, b, hw, affine, relu, param_dtype", CASES)
def test_splat_combine_matches_reference(radix, groups, layout, dtype, b, hw, affine, relu, param_dtype):
    ins = _inputs(radix, layout, dtype, b, hw, affine, param_dtype)
    _assert_close_to_reference(lambda i, be: _run_combine(i, radix, groups, relu, be), ins, dtype)


@pytest.mark.parametrize(
    "radix, groups, layout, dtype, b, hw, affine, relu, param_dtype", [c for c in CASES if c.values[6]]
)
def test_fused_backward_passes_match_reference(radix, groups, layout, dtype, b, hw, affine, relu, param_dtype):
    """The training-only ops (always bn0 + relu, so the cases with an affine)."""
    ins = _inputs(radix, layout, dtype, b, hw, affine, param_dtype)
    _assert_close_to_reference(lambda i, be: _run_training(i, radix, groups, be), ins, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 3, 1, 1), (3, 5, 4, 1)])
def test_bn_stats_against_float64(layout, dtype, shape):
    """bn0's batch statistics against torch.var_mean in float64, on data whose mean dwarfs its spread (where
    E[x^2] - E[x]^2 would lose every digit; the kernels merge per-tile means and squared deviations)."""
    b, k, h, w = shape
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(b, k, h, 2 * w, generator=gen, dtype=torch.float64) * 0.5 + 100.0).to(DEVICE, dtype)
    x = x[..., ::2] if layout == "sliced" else x[..., :w].contiguous()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    var, mean = splat_bn_stats(x, backend="triton")
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert var.dtype == mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mean.double(), mean64, rtol=tol, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=tol * 100, atol=tol * 100 * var64.abs().max().item())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "radix, groups, num_sms, hw, chunk_tiles",
    [(1, 2, 132, (5, 7), 1), (3, 2, 1, (9, 11), 3), (4, 2, 132, (5, 7), 1)],
    ids=["r1-one-tile-chunks", "r3-three-tile-chunks", "r4-one-tile-chunks"],
)
def test_several_tiles_and_chunks_float64(monkeypatch, radix, groups, num_sms, hw, chunk_tiles, layout):
    """Tiles smaller than the tensor: several channel blocks with a masked tail, positions split in chunks (of one
    or of several tiles) whose partial sums the finishing passes add, the last chunk a short tail. float64 shows
    the two-stage reductions exact to rounding (the mean is divided in float64 inside the kernel)."""
    monkeypatch.setattr(splat_triton, "block_sizes", lambda c, p, channels_last, dtype=None: (4, 16))
    monkeypatch.setattr(splat_triton, "num_sms", lambda x: num_sms)  # the launchers' SM count, GPU or not
    b, c = 2, 10
    for kernel in ("pool", "pool_backward", "combine_backward", "backward_reduce"):
        lp = splat_triton.launch_params(kernel, b, c, *hw, radix, torch.float64, layout == "channels_last", num_sms)
        p = hw[0] * hw[1]
        assert lp.chunk_p == 16 * chunk_tiles and lp.chunks >= 3 and p % lp.chunk_p, lp  # a tail chunk
        assert lp.c_blocks == 3 and lp.programs == b * 3 * lp.chunks
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, radix * c, *hw, generator=gen, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    ins = {
        "x": x,
        "logits": torch.randn(b, radix * c, generator=gen, dtype=torch.float64),
        "scale": torch.randn(radix * c, generator=gen, dtype=torch.float64),
        "shift": torch.randn(radix * c, generator=gen, dtype=torch.float64),
        "grad_gap": torch.randn(b, c, generator=gen, dtype=torch.float64),
        "grad_out": torch.randn(b, c, *hw, generator=gen, dtype=torch.float64),
    }
    ins = {k: v.to(DEVICE) for k, v in ins.items()}
    for run in (lambda be: _run_pool(ins, radix, True, be), lambda be: _run_combine(ins, radix, groups, True, be),
                lambda be: _run_training(ins, radix, groups, be)):
        got, ref = run("triton"), run("reference")
        for name in got:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-12, msg=name)
    # bn0's statistics over x's radix*c channels: several (sample, chunk) partials merged per channel with a tail
    # chunk, or (one SM) several tiles merged within one chunk, a short tail tile last
    lp = splat_triton.launch_params("bn_stats", b, c, *hw, radix, torch.float64, layout == "channels_last", num_sms)
    p = hw[0] * hw[1]
    assert (lp.chunks >= 3 and p % lp.chunk_p) or (lp.chunk_p >= 3 * 16 and p % 16), lp
    assert lp.finish_rows == b * lp.chunks, lp
    y = ins["x"] * 0.25 + 50.0
    for got, want in zip(splat_bn_stats(y, backend="triton"), torch.var_mean(y, dim=(0, 2, 3), correction=0)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reductions_are_bit_reproducible():
    """Two-stage reductions without atomics: the same inputs give the same bits, run after run."""
    ins = _inputs(2, "channels_last", torch.float32, 2, (7, 9), True, torch.float32)
    first, second = _run_combine(ins, 2, 1, True, "triton"), _run_combine(ins, 2, 1, True, "triton")
    for run in (first, second):
        run |= {"gap": _run_pool(ins, 2, True, "triton")["gap"]}
        run |= _run_training(ins, 2, 1, "triton")
        run |= dict(zip(("var", "mean"), splat_bn_stats(ins["x"], backend="triton")))
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_gradcheck_float64():
    """Float64 end to end (the kernels then accumulate in float64); fast_mode keeps the number of interpreted
    launches small."""
    gen = torch.Generator().manual_seed(2)
    radix, groups, c = 4, 2, 2
    x = torch.randn(2, radix * c, 3, 5, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    logits = torch.randn(2, radix * c, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    scale = torch.randn(radix * c, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    shift = torch.randn(radix * c, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    checks = [
        (lambda *t: splat_pool(*t, radix, True, backend="triton"), (x, scale, shift)),
        (lambda *t: splat_combine(*t, radix, groups, True, backend="triton"), (x, logits, scale, shift)),
        (lambda *t: splat_combine(*t, None, None, 1, 2, False, backend="triton"), (x, logits)),
    ]
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_opcheck(layout, affine):
    radix, groups, c, hw = 2, 2, 4, (3, 5)
    gen = torch.Generator().manual_seed(3)
    x = _make_x(2, radix * c, hw, layout, torch.float32, gen)
    logits = torch.randn(2, radix * c, generator=gen).to(DEVICE)
    scale = torch.randn(radix * c, generator=gen).to(DEVICE) if affine else None
    shift = torch.randn(radix * c, generator=gen).to(DEVICE) if affine else None
    grad_gap = torch.randn(2, c, generator=gen).to(DEVICE)
    grad_out = torch.randn(2, c, *hw, generator=gen).to(DEVICE)
    torch.library.opcheck(OPS.triton_splat_pool.default, (x, scale, shift, radix, True))
    torch.library.opcheck(OPS.triton_splat_pool_backward.default, (grad_gap, x, scale, shift, radix, True))
    torch.library.opcheck(OPS.triton_splat_combine.default, (x, logits, scale, shift, radix, groups, True))
    torch.library.opcheck(
        OPS.triton_splat_combine_backward.default, (grad_out, x, logits, scale, shift, radix, groups, True)
    )
    if affine:  # the training-only ops
        coef_a, coef_b = (torch.randn(radix * c, generator=gen).to(DEVICE) for _ in range(2))
        torch.library.opcheck(OPS.triton_splat_bn_stats.default, (x,))
        torch.library.opcheck(OPS.triton_splat_backward_reduce.default,
                              (grad_out, x, logits, scale, shift, radix, groups))
        torch.library.opcheck(OPS.triton_splat_backward_input.default,
                              (grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups))
    if affine:  # the autograd registration, with every input requiring grad
        args = [t.detach().clone().requires_grad_() for t in (x, logits, scale, shift)]
        torch.library.opcheck(OPS.triton_splat_combine.default, (*args, radix, groups, True))
        torch.library.opcheck(OPS.triton_splat_pool.default, (args[0], *args[2:], radix, True))


def test_output_layouts_and_dtypes():
    """Outputs in kernel_layout(x), x's dtype; grad_scale/grad_shift in scale's dtype, (0,) without affine."""
    x = torch.randn(1, 8, 3, 5, dtype=torch.bfloat16, device=DEVICE).to(memory_format=torch.channels_last)
    logits = torch.randn(1, 8, dtype=torch.bfloat16, device=DEVICE)
    scale, shift = torch.randn(8, device=DEVICE), torch.randn(8, device=DEVICE)
    out = OPS.triton_splat_combine(x, logits, scale, shift, 2, 2, True)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    dx, dlogits, dscale, dshift = OPS.triton_splat_combine_backward(out, x, logits, scale, shift, 2, 2, True)
    assert dx.is_contiguous(memory_format=torch.channels_last) and dx.dtype == torch.bfloat16
    assert dlogits.dtype == torch.bfloat16 and dscale.dtype == dshift.dtype == torch.float32
    grad_gap = torch.ones(1, 4, dtype=torch.bfloat16, device=DEVICE)
    dx, dscale, dshift = OPS.triton_splat_pool_backward(grad_gap, x, None, None, 2, True)
    assert dscale.shape == dshift.shape == (0,) and dscale.dtype == torch.bfloat16
    assert dx.is_contiguous(memory_format=kernel_layout(x))


def test_empty_inputs():
    x = torch.randn(0, 8, 3, 5, device=DEVICE)
    logits = torch.randn(0, 8, device=DEVICE)
    scale, shift = torch.randn(8, device=DEVICE), torch.randn(8, device=DEVICE)
    assert OPS.triton_splat_pool(x, scale, shift, 2, True).shape == (0, 4)
    assert OPS.triton_splat_combine(x, logits, scale, shift, 2, 2, True).shape == (0, 4, 3, 5)
    dx, dscale, dshift = OPS.triton_splat_pool_backward(torch.randn(0, 4, device=DEVICE), x, scale, shift, 2, True)
    zeros = torch.zeros(8, device=DEVICE)
    assert dx.shape == x.shape and torch.equal(dscale, zeros) and torch.equal(dshift, zeros)
    # no positions: combine's gradients are zero (its output is empty); pool has no mean to take
    x = torch.randn(2, 8, 0, 5, device=DEVICE)
    logits = torch.randn(2, 8, device=DEVICE)
    dx, dlogits, dscale, dshift = OPS.triton_splat_combine_backward(
        torch.randn(2, 4, 0, 5, device=DEVICE), x, logits, None, None, 2, 2, True
    )
    assert dx.shape == x.shape and torch.equal(dlogits, torch.zeros(2, 8, device=DEVICE)) and dscale.shape == (0,)
    with pytest.raises(RuntimeError, match="H\\*W > 0"):
        OPS.triton_splat_pool(x, None, None, 2, True)


def test_nan_passes_like_reference():
    """relu keeps NaN and passes its gradient (torch's threshold_backward), in the kernels as in the reference."""
    ins = _inputs(2, "contiguous", torch.float32, 1, (3, 3), True, torch.float32)
    ins["x"][0, 1, 1, 1] = float("nan")
    for run in (lambda be: _run_pool(ins, 2, True, be), lambda be: _run_combine(ins, 2, 1, True, be)):
        got, ref = run("triton"), run("reference")
        for name in got:
            torch.testing.assert_close(got[name], ref[name], equal_nan=True, msg=name)


@pytest.mark.parametrize("compile_backend", ["inductor", "aot_eager"])
def test_torch_compile_fullgraph(compile_backend):
    radix, groups, c = 4, 2, 2
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, radix * c, 3, 5, generator=gen).to(DEVICE).to(memory_format=torch.channels_last)
    logits = torch.randn(2, radix * c, generator=gen).to(DEVICE)
    scale, shift = torch.randn(radix * c, generator=gen).to(DEVICE), torch.randn(radix * c, generator=gen).to(DEVICE)

    def loss(x, logits, scale, shift):
        gap = splat_pool(x, scale, shift, radix, True, backend="triton")
        out = splat_combine(x, logits, scale, shift, radix, groups, True, backend="triton")
        return (gap.square().sum() + (out * out.cos()).sum(), out)

    def value_and_grads(fn):
        args = [t.detach().clone().requires_grad_() for t in (x, logits, scale, shift)]
        value, out = fn(*args)
        return (value, out, *torch.autograd.grad(value, args))

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=compile_backend)
    for got, expected in zip(value_and_grads(compiled), value_and_grads(loss)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
