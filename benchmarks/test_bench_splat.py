"""Split attention after the conv, at the headline shape (named "issue" in the CSVs): B=2, radix 2, C=256,
64x128 (y: 2x512x64x128), fp32.

Providers, side by side in one process: mmseg-style eager, torch.compile of that eager code, ours (the fused
ops with the backends available here), and a plain copy of y into a preallocated tensor (the bandwidth yardstick).
Modes: forward (eval, bn0 folded, no grad) and full (train: batch statistics, forward + backward).
Run: pytest benchmarks --benchmark-only   (pytest-benchmark; results also in benchmarks/results/splat.csv)
"""
import copy

import pytest
import torch

from benchmarks import report
from benchmarks.providers import eager_post_conv, fused_post_conv, make_block
from benchmarks.providers import away_from_the_kink
from benchmarks.test_bench_ops import KINK_GAP
from resnest_fast.backend import available_backends

SHAPES = {"issue": (2, 256, 64, 128), "quick": (2, 64, 32, 32)}  # (B, C, H, W), radix 2
OURS = [b for b in available_backends("cpu") if b in ("cpu",)] + (["cuda"] if torch.cuda.is_available() else [])
PROVIDERS = ["eager", "compiled"] + [f"ours-{b}" for b in OURS]
ROUNDS = {"forward": 20, "full": 8}
_medians = {}


def _compiled(block, train):
    torch._dynamo.reset()
    return torch.compile(lambda y: eager_post_conv(block, y))


def _fn(provider, block, train):
    if provider == "eager":
        return lambda y: eager_post_conv(block, y)
    if provider == "compiled":
        return _compiled(block, train)
    block.backend = provider.split("-", 1)[1]
    return lambda y: fused_post_conv(block, y)


def _record(benchmark, shape_name, mode, provider, y):
    median_ms = benchmark.stats.stats.median * 1e3
    _medians[(shape_name, mode, provider)] = median_ms
    nbytes = y.numel() * y.element_size()
    row = {"bench": "splat_post_conv", "shape": shape_name, "y_shape": "x".join(map(str, y.shape)),
           "dtype": str(y.dtype).replace("torch.", ""), "mode": mode, "provider": provider,
           "median_ms": round(median_ms, 3), "min_ms": round(benchmark.stats.stats.min * 1e3, 3),
           "rounds": benchmark.stats.stats.rounds}
    if provider == "copy":
        row["gbps"] = round(2 * nbytes / median_ms / 1e6, 2)
    elif mode == "forward":  # 2 reads of y + a write of half of it: what a fused forward must move
        row["gbps"] = round(2.5 * nbytes / median_ms / 1e6, 2)
    report.add("splat", row)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_copy(benchmark, shape_name):
    b, c, h, w = SHAPES[shape_name]
    y = torch.randn(b, 2 * c, h, w)
    dst = torch.empty_like(y)
    benchmark.pedantic(lambda: dst.copy_(y), rounds=ROUNDS["forward"], warmup_rounds=3)
    _record(benchmark, shape_name, "forward", "copy", y)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_forward(benchmark, provider, shape_name):
    b, c, h, w = SHAPES[shape_name]
    block = make_block(channels=c, train=False)
    y = torch.randn(b, 2 * c, h, w)
    fn = _fn(provider, block, False)
    with torch.no_grad():
        ref = eager_post_conv(block, y)
        torch.testing.assert_close(fn(y), ref, atol=1e-4, rtol=1e-4)  # the same numbers, or no timing
        benchmark.pedantic(fn, args=(y,), rounds=ROUNDS["forward"], warmup_rounds=3)
    _record(benchmark, shape_name, "forward", provider, y)


def _output_and_grads(fn, block, y, grad):
    """Output, grad y and the gradient of every parameter of the block after its conv, of one training step."""
    block.zero_grad()
    y = y.detach().requires_grad_(True)
    out = fn(y)
    wrt = [y] + [p for name, p in block.named_parameters() if not name.startswith("conv")]
    return [out.detach()] + list(torch.autograd.grad(out, wrt, grad))


def _check_full(provider, block, y, grad, fn):
    """The provider's training step against mmseg-style eager in float64, within twice eager's own fp32 error
    plus 1e-4 of the largest value (bn1 normalises over a batch of 2, which amplifies rounding in any summation
    order); y is moved off ReLU's kink first, where rounding decides a whole term (benchmarks/test_bench_ops.py)."""
    names = ["output", "grad y"] + [f"grad {n}" for n, _ in block.named_parameters() if not n.startswith("conv")]
    twin = copy.deepcopy(block)  # the provider's block keeps its own running statistics
    got = _output_and_grads(fn, block, y, grad)
    same = _output_and_grads(lambda t: eager_post_conv(twin, t), twin, y, grad)
    block64 = copy.deepcopy(block).double()
    ref64 = _output_and_grads(lambda t: eager_post_conv(block64, t), block64, y.double(), grad.double())
    scale = max(1.0, max(r.abs().max().item() for r in ref64))
    for name, g, s, r in zip(names, got, same, ref64):
        err = (g.double() - r).abs().max().item()
        ref_err = (s.double() - r).abs().max().item()
        bound = 2 * ref_err + 1e-4 * scale
        assert err <= bound, (f"{provider} {name}: max error {err:.3g} against float64 eager > {bound:.3g} (eager in "
                              f"fp32: {ref_err:.3g}); not timed")


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_full(benchmark, provider, shape_name):
    b, c, h, w = SHAPES[shape_name]
    block = make_block(channels=c, train=True)
    y = away_from_the_kink(block, torch.randn(b, 2 * c, h, w), KINK_GAP[torch.float32])
    grad = torch.randn(b, c, h, w)
    fn = _fn(provider, block, True)
    _check_full(provider, block, y, grad, fn)  # the same numbers, or no timing (this call also compiles)
    y.requires_grad_(True)

    def step():
        out = fn(y)
        out.backward(grad)

    benchmark.pedantic(step, rounds=ROUNDS["full"], warmup_rounds=2)
    _record(benchmark, shape_name, "full", provider, y)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_summary(benchmark, shape_name):
    """Ratios of the medians measured above, and the bytes saved for backward (a count, not a timing)."""
    from benchmarks.memory import saved_bytes_ratio

    benchmark.pedantic(lambda: None, rounds=1)
    m = {(mode, p): v for (s, mode, p), v in _medians.items() if s == shape_name}
    for ours in [p for p in PROVIDERS if p.startswith("ours")]:
        parts = []
        for mode in ("forward", "full"):
            if (mode, ours) in m and (mode, "eager") in m:
                parts.append(f"{mode}: {m[(mode, 'eager')] / m[(mode, ours)]:.2f}x eager")
            if (mode, ours) in m and (mode, "compiled") in m:
                parts.append(f"{m[(mode, 'compiled')] / m[(mode, ours)]:.2f}x compiled")
        if ("forward", ours) in m and ("forward", "copy") in m:
            b, c, h, w = SHAPES[shape_name]
            nbytes = b * 2 * c * h * w * 4
            bw_ours = 2.5 * nbytes / m[("forward", ours)]
            bw_copy = 2 * nbytes / m[("forward", "copy")]
            parts.append(f"fused forward bandwidth {bw_ours / 1e6:.1f} GB/s = {bw_ours / bw_copy:.0%} of copy_")
        report.note(f"{shape_name} {ours}: " + ", ".join(parts))
        report.add("splat", {"bench": "ratios", "shape": shape_name, "provider": ours, "detail": "; ".join(parts)})
    b, c, h, w = SHAPES[shape_name]
    ours_b, ref_b = saved_bytes_ratio(b, c, h, w)
    report.note(f"{shape_name}: bytes saved for backward by one block (train): ours {ours_b / 2**20:.1f} MiB, "
                f"mmseg-style {ref_b / 2**20:.1f} MiB, ratio {ours_b / ref_b:.3f}")
    report.add("splat", {"bench": "saved_bytes", "shape": shape_name, "provider": "ours/mmseg",
                         "detail": f"{ours_b} / {ref_b} = {ours_b / ref_b:.3f}"})
