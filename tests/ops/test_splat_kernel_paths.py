"""Every loop of the CPU kernels (csrc/ops/cpu/splat_kernel.cpp), and the fused backward's formula proven.

The small sweeps of test_splat_ops.py stay below every threshold of the kernels: the NCHW pool keeps kLanes = 64
partial sums only from H*W >= 64, the NCHW combine of a radix other than 1, 2, 4 goes in kChunk = 512-position
chunks, at::parallel_for splits the work only above kGrainElems = 32768 elements of x per task, and channels_last
cuts each sample into runs whose count grows with the thread count. The shapes here cross all of them with a tail
left over (H*W = 675 and 2145: 10 and 33 full 64-lane blocks, 1 and 4 full 512-chunks, then a remainder), one of
them above 32768 elements, on two threads, for pool, combine, bn_stats and both passes of the fused backward.

The fused backward (splat_backward_reduce, then splat_backward_input with the coefficients of bn0's batch
statistics) is checked against torch.autograd of the unfused block in float64 (F.batch_norm -> relu -> split sum
-> mean pool, rSoftMax -> weighted sum): that proves its formula is the gradient, where
splat_backward_input_reference only transcribes the formula. Low precision follows flash-attention's rule: our
error against float64 is at most twice torch's own error in that dtype (the same unfused block run in it), plus a
floor.
"""
import pytest
import torch
import torch.nn.functional as F

from resnest_fast import _extension as ext
from resnest_fast.op_rules import accumulation_dtype
from resnest_fast.ops import (
    attention_weights_reference,
    splat_backward_input,
    splat_backward_reduce,
    splat_bn_stats,
    splat_bn_stats_reference,
    splat_combine,
    splat_pool,
)
from resnest_fast.testing.tolerances import FLOOR as LOW_PRECISION_FLOOR
from tests.ops.test_splat_ops import FAST_BACKENDS, KERNEL_BACKENDS, compare_with_reference, make_inputs

K_LANES, K_CHUNK, K_GRAIN_ELEMS = 64, 512, 32768  # csrc/ops/cpu/splat_kernel.cpp
# (B, C, H, W), C per split: H*W = 675 = 10*64 + 35 = 512 + 163 (batch 2, one task), and 2145 = 33*64 + 33 =
# 4*512 + 97 with radix*32*2145 >= 68640 elements (several tasks)
SHAPES = [(2, 16, 25, 27), (1, 32, 33, 65)]
# radix 3 takes the NCHW combine's chunked loop (1, 2 and 4 have unrolled loops); (4, 2): groups > 1
RADIX_GROUPS = [(1, 1), (2, 1), (3, 1), (4, 2)]
LAYOUTS = ["contiguous", "channels_last", "non_contiguous"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
needs_training_kernels = pytest.mark.skipif(not ext.TRAINING_KERNELS["cpu"],
                                            reason="resnest_fast._C was built without the training kernels")
# floors of the "twice torch's own error" rule, relative to the largest float64 value (at least 1): fp32's is the
# module parity tolerance (tests/nn), half and bfloat16 those of resnest_fast/testing/tolerances.py
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, **LOW_PRECISION_FLOOR}


def test_shapes_cross_every_threshold():
    """The reason for SHAPES, checked: a full block and a tail of each loop, and work for several tasks."""
    for b, c, h, w in SHAPES:
        p = h * w
        assert p >= 600 and p >= K_LANES and p % K_LANES and p > K_CHUNK and p % K_CHUNK
    b, c, h, w = SHAPES[1]
    assert min(b * r * c * h * w for r, _ in RADIX_GROUPS) > 2 * K_GRAIN_ELEMS  # at least 3 tasks at every radix


def assert_twice_torch_error(name, got, same, ref64, floor_dtype=None):
    """|got - ref64| <= 2 |same - ref64| + FLOOR * max(1, |ref64|), max over the tensor; `same` is torch's
    unfused computation in got's dtype. The floor is that of got's dtype, or of floor_dtype where the
    computation ran in another (autocast: float32 parameter gradients of bfloat16 products)."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert got.dtype == same.dtype, f"{name}: {got.dtype} where torch gives {same.dtype}"
    err = (got.double() - ref64).abs().max().item()
    torch_err = (same.double() - ref64).abs().max().item()
    bound = 2 * torch_err + FLOOR[floor_dtype or got.dtype] * max(1.0, ref64.abs().max().item())
    assert err <= bound, f"{name} ({got.dtype}): max error {err:.3g} > {bound:.3g} (torch in {got.dtype}: " \
                         f"{torch_err:.3g})"


def strided_like(x, layout):
    """x in `layout`; "non_contiguous" is a real strided view (every other column of a wider tensor)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "non_contiguous":
        b, k, h, w = x.shape
        wide = torch.empty_strided((b, k, h, 2 * w), (k * h * 2 * w, h * 2 * w, 2 * w, 1), dtype=x.dtype)
        view = wide[..., ::2]
        view.copy_(x)
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
        return view
    return x.contiguous()


# ------------------------------------------------------------------------------ pool and combine (op autograd)


def sweep(forms, big_forms, big_radix_groups, radix_groups=RADIX_GROUPS):
    """(shape, form, layout, (radix, groups)) cases: the whole cartesian product at the 675-position shape (the
    strided layout in the first form only: the CPU ops read it through one dense copy, like the others), a few
    at the threaded shape (every loop is already crossed; this adds the split into tasks and runs)."""
    cases = [(SHAPES[0], f, layout, rg) for f in forms for layout in LAYOUTS[:2] for rg in radix_groups]
    cases += [(SHAPES[0], forms[0], "non_contiguous", rg) for rg in radix_groups]
    cases += [(SHAPES[1], f, layout, rg) for f in big_forms for layout in LAYOUTS[:2] for rg in big_radix_groups]
    return cases


def case_id(case):
    (b, c, h, w), form, layout, (radix, groups) = case
    form = str(form).replace("torch.", "")
    return f"{b}x{c}x{h}x{w}-{form}-{layout}-r{radix}g{groups}"


POOL_COMBINE_CASES = sweep(DTYPES, [torch.float32, torch.bfloat16], [(2, 1), (3, 1)])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", POOL_COMBINE_CASES, ids=[case_id(c) for c in POOL_COMBINE_CASES])
def test_pool_and_combine_every_loop(backend, case, two_threads):
    """Forward and every gradient of splat_pool and splat_combine against the reference in float64 (and, for
    float32, in float32: test_splat_ops' rule)."""
    shape, dtype, layout, (radix, groups) = case
    b, c, h, w = shape
    x, logits, scale, shift = make_inputs(shape, radix, layout, dtype, affine=True)
    grad_gap, grad_out = torch.randn(b, c, dtype=dtype), torch.randn(b, c, h, w, dtype=dtype)
    compare_with_reference(backend, x, logits, scale, shift, radix, groups, grad_gap, grad_out)


# ---------------------------------------------------------------------------------------------------- bn_stats


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64] + DTYPES)
@pytest.mark.parametrize("shape", [(2, 32, 25, 27), (1, 64, 33, 65)], ids=["675pos", "2145pos_threads"])
def test_bn_stats_every_loop(backend, layout, dtype, shape, two_threads):
    """bn0's batch statistics on data whose mean dwarfs its spread, against torch.var_mean in float64 of the same
    (rounded) values: within twice torch's own error (var_mean of the values upcast to the accumulation dtype)."""
    x = strided_like((torch.randn(shape, dtype=torch.float64) * 0.5 + 100.0).to(dtype), layout)
    assert_bn_stats_match_float64(x, backend)


def assert_bn_stats_match_float64(x, backend):
    """splat_bn_stats of x on `backend` against torch.var_mean of x in float64: within twice the reference's own
    error, and the variance within a relative bound (the floor alone would let a lost block pass for |var| < 1)."""
    var, mean = splat_bn_stats(x, backend=backend)
    var_t, mean_t = splat_bn_stats_reference(x)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    assert_twice_torch_error("mean", mean, mean_t, mean64)
    assert_twice_torch_error("var", var, var_t, var64)
    rel = 1e-12 if x.dtype == torch.float64 else 1e-5
    assert ((var.double() - var64).abs() <= rel * var64).all(), (var.double() - var64).abs().max()


# ------------------------------------------------------------------- fused backward against float64 autograd

FORMS = {  # name -> (dtype of y, grad_out, grad_gap; dtype of bn0's parameters and scale/shift)
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "autocast_bf16": (torch.bfloat16, torch.float32),  # autocast: the conv output is bf16, bn0 stays fp32
}
EPS = 1e-5


def unfused_block(y, weight, bias, running_var, running_mean, logits, radix, groups, batch_stats):
    """The module after its conv, as mmseg writes it: bn0 (F.batch_norm) -> relu -> sum of the splits -> mean
    pool, and rSoftMax(logits) -> weighted sum of the splits. -> (gap (B, C), out (B, C, H, W))."""
    b, rc, h, w = y.shape
    act = F.relu(F.batch_norm(y, None if batch_stats else running_mean, None if batch_stats else running_var,
                              weight, bias, batch_stats, 0.0, EPS))
    splits = act.reshape(b, radix, rc // radix, h, w)
    gap = splits.sum(1).mean((2, 3))
    att = attention_weights_reference(logits, radix, groups)
    return gap, (att[..., None, None] * splits).sum(1)


def unfused_gradients(y, weight, bias, running_var, running_mean, logits, grad_gap, grad_out, radix, groups,
                      batch_stats):
    """(gap, out, grad y, grad weight, grad bias, grad logits) by torch.autograd of unfused_block."""
    leaves = [t.detach().requires_grad_(True) for t in (y, weight, bias, logits)]
    gap, out = unfused_block(leaves[0], leaves[1], leaves[2], running_var, running_mean, leaves[3], radix, groups,
                             batch_stats)
    grads = torch.autograd.grad((gap, out), leaves, (grad_gap.to(gap.dtype), grad_out.to(out.dtype)))
    return [gap.detach(), out.detach(), *grads]


def fused_gradients(y, weight, bias, running_var, running_mean, logits, grad_gap, grad_out, radix, groups,
                    batch_stats, backend):
    """The same gradients through the fused ops, composed as their contract says (resnest_fast/ops/
    splat_backward.py): pass 1 gives the combine's part of d scale, d shift and the sums mx, m from which the
    pool's part follows; bn0's affine (and batch statistics) chain on the small (R*C,) tensors; pass 2 writes
    grad y with the batch statistics' part as coef_a*y + coef_b."""
    b, rc, h, w = y.shape
    n = b * h * w
    var, mean = splat_bn_stats(y, backend=backend) if batch_stats else (running_var, running_mean)
    w_ = weight.detach().requires_grad_(True)
    b_ = bias.detach().requires_grad_(True)
    # bn0 is folded in the accumulation dtype (float32 for bfloat16 parameters), as the module does
    v_ = var.detach().to(accumulation_dtype(var.dtype)).requires_grad_(batch_stats)
    m_ = mean.detach().to(accumulation_dtype(mean.dtype)).requires_grad_(batch_stats)
    with torch.enable_grad():
        scale = w_ * torch.rsqrt(v_ + EPS)
        shift = b_ - m_ * scale
    sc, sh = scale.detach(), shift.detach()
    dlogits, dscale, dshift, mx, m = splat_backward_reduce(grad_out, y, logits, sc, sh, radix, groups,
                                                           backend=backend)
    gg = (grad_gap.to(mx.dtype) / (h * w)).repeat(1, radix)
    dscale = dscale + (gg * mx).sum(0).to(dscale.dtype)
    dshift = dshift + (gg * m).sum(0).to(dshift.dtype)
    inputs = [w_, b_] + ([v_, m_] if batch_stats else [])
    bn_grads = torch.autograd.grad((scale, shift), inputs, (dscale, dshift))
    if batch_stats:
        coef_a = (2.0 / n) * bn_grads[2]
        coef_b = bn_grads[3] / n - coef_a * m_.detach()
    else:
        coef_a = coef_b = torch.zeros_like(sc)
    grad_y = splat_backward_input(grad_out, grad_gap, y, logits, sc, sh, coef_a, coef_b, radix, groups,
                                  backend=backend)
    return grad_y, bn_grads[0], bn_grads[1], dlogits


BACKWARD_CASES = [case + (batch_stats,) for case in sweep(list(FORMS), ["fp32", "bf16"], [(4, 2)],
                                                           [(1, 1), (2, 1), (4, 2)])
                  for batch_stats in (True, False)]


@needs_training_kernels
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("case", BACKWARD_CASES,
                         ids=[case_id(c[:4]) + ("-train" if c[4] else "-eval") for c in BACKWARD_CASES])
def test_fused_backward_is_the_gradient(backend, case, two_threads):
    """grad y, bn0's weight and bias and the logits through the two fused passes, against float64 autograd of
    the unfused block; batch statistics (train) or running ones (eval)."""
    shape, form, layout, (radix, groups), batch_stats = case
    args = backward_inputs(shape, radix, groups, layout, form, batch_stats)
    got = fused_gradients(*args, backend=backend)
    assert_fused_backward_is_the_gradient(got, args)


def backward_inputs(shape, radix, groups, layout, form, batch_stats):
    """(y, bn0 weight, bias, running var, running mean, logits, grad_gap, grad_out, radix, groups, batch_stats) in
    the form's dtypes; y and grad_out in `layout`."""
    b, c, h, w = shape
    dtype, param_dtype = FORMS[form]
    rc = radix * c
    y = strided_like(torch.randn(b, rc, h, w, dtype=torch.float64).to(dtype), layout)
    logits = (2 * torch.randn(b, rc, dtype=torch.float64)).to(dtype)
    weight = (torch.rand(rc, dtype=torch.float64) + 0.5).to(param_dtype)
    bias = (0.5 * torch.randn(rc, dtype=torch.float64)).to(param_dtype)
    running_var = (torch.rand(rc, dtype=torch.float64) + 0.5).to(param_dtype)
    running_mean = (0.5 * torch.randn(rc, dtype=torch.float64)).to(param_dtype)
    grad_out = strided_like(torch.randn(b, c, h, w, dtype=torch.float64).to(dtype), layout)
    # grad_gap scaled by H*W so that the pool's term of grad y is as large as the combine's
    grad_gap = (torch.randn(b, c, dtype=torch.float64) * (h * w) / 4).to(dtype)
    return y, weight, bias, running_var, running_mean, logits, grad_gap, grad_out, radix, groups, batch_stats


def assert_fused_backward_is_the_gradient(got, args):
    """got = fused_gradients(*args): against torch's unfused block in got's dtype and in float64."""
    same = unfused_gradients(*args)[2:]
    ref64 = unfused_gradients(*(t.double() if torch.is_tensor(t) else t for t in args))[2:]
    for name, g, s, r in zip(["grad y", "grad bn0.weight", "grad bn0.bias", "grad logits"], got, same, ref64):
        assert g.device == args[0].device, f"{name} on {g.device}"
        assert_twice_torch_error(name, g, s, r)


@pytest.mark.parametrize("backend", ["reference"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_backward_masks_non_finite_gradients(backend, layout):
    """An inf in grad_out and a NaN in grad_gap through both fused passes (eval: running statistics) against
    torch.autograd of the unfused block: relu's backward selects, so wherever relu is off grad y is 0, not
    0*inf = NaN. bn0's parameter gradients are non-finite where torch's are, not always the same non-finite value:
    they are chained through scale and shift (sum(d*y)*invstd - sum(d)*mean*invstd is inf - inf where torch's
    sum(d*(y - mean)*invstd) is inf)."""
    if backend == "cpu" and not ext.TRAINING_KERNELS["cpu"]:
        pytest.skip("resnest_fast._C was built without the training kernels")
    args = list(backward_inputs((2, 4, 3, 3), 2, 1, layout, "fp32", False))
    args[7] = args[7].clone()  # grad_out, in its layout
    args[7][0, 1, :, 2] = float("inf")
    args[6][1, 3] = float("nan")  # grad_gap
    got = fused_gradients(*args, backend=backend)
    same = unfused_gradients(*args)[2:]
    assert (same[0][0, [1, 5], :, 2] == 0).any() and (same[0][1, [3, 7]] == 0).any(), "relu is never off there"
    for name, g, s in zip(["grad y", "grad bn0.weight", "grad bn0.bias", "grad logits"], got, same):
        finite = s.isfinite()
        assert torch.equal(g.isfinite(), finite), f"{name}: non-finite at other entries than torch's"
        if name in ("grad y", "grad logits"):
            torch.testing.assert_close(g, s, equal_nan=True, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        else:
            torch.testing.assert_close(g[finite], s[finite], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


# -------------------------------------------------------------------------- long channels_last runs, one thread

# (B, C, H, W), radix 4: on one thread a sample is cut into 4 runs; 131*129 = 16899 positions make runs of 4225 =
# 264*16 + 1 (a full 4096-position sum of the last level, then partial ones of every level: kFanIn = 16 and
# kLevels = 3 in csrc/ops/cpu/splat_kernel.cpp); 256x256 is the audit's shape.
LONG_RUN_SHAPES = [pytest.param((1, 32, 131, 129), id="16899pos"),
                   pytest.param((1, 32, 256, 256), id="65536pos", marks=pytest.mark.heavy)]


def long_run_reductions(backend, x, logits, scale, shift, grad_gap, grad_out, radix, groups):
    """Every sum over positions of the ops: gap; pool backward's grad scale and shift; combine backward's grad
    logits, scale and shift; the fused backward's first pass (grad logits, scale, shift, mx, m)."""
    leaves = [t.detach().requires_grad_(True) for t in (x, logits, scale, shift)]
    gap = splat_pool(leaves[0], leaves[2], leaves[3], radix=radix, backend=backend)
    pool = torch.autograd.grad(gap, (leaves[2], leaves[3]), grad_gap)
    out = splat_combine(*leaves, radix=radix, groups=groups, backend=backend)
    combine = torch.autograd.grad(out, leaves[1:], grad_out)
    fused = splat_backward_reduce(grad_out, x, logits, scale, shift, radix, groups, backend=backend)
    names = ["gap", "pool grad scale", "pool grad shift", "combine grad logits", "combine grad scale",
             "combine grad shift", "reduce grad logits", "reduce grad scale", "reduce grad shift", "reduce mx",
             "reduce m"]
    return dict(zip(names, [gap.detach(), *pool, *combine, *fused]))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", LONG_RUN_SHAPES)
def test_long_channels_last_runs_keep_the_reference_accuracy(backend, shape, one_thread):
    """channels_last sums over positions go along runs of thousands of positions: against float64, within twice
    the reference's own fp32 error plus one fp32 ulp of the largest value (one fp32 accumulator per channel along a
    run errs 5-40x the reference)."""
    if not ext.TRAINING_KERNELS["cpu"]:
        pytest.skip("resnest_fast._C was built without the training kernels")
    radix, groups = 4, 2
    b, c, h, w = shape
    x, logits, scale, shift = make_inputs(shape, radix, "channels_last", torch.float32, True, requires_grad=False)
    grad_gap = torch.randn(b, c)
    grad_out = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)
    args = (x, logits, scale, shift, grad_gap, grad_out, radix, groups)
    got = long_run_reductions(backend, *args)
    same = long_run_reductions("reference", *args)
    ref64 = long_run_reductions("reference", *(t.double() if torch.is_tensor(t) else t for t in args))
    for name, r in ref64.items():
        err = (got[name].double() - r).abs().max().item()
        ref_err = (same[name].double() - r).abs().max().item()
        bound = 2 * ref_err + torch.finfo(torch.float32).eps * r.abs().max().item()
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (reference in fp32: {ref_err:.3g})"
