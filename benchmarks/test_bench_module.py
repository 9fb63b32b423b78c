"""One whole SplitAttentionConv2d (the grouped 3x3 conv included), fp32: eval forward and train forward+backward.

Providers, side by side in one process, same weights (ours copied into mmseg's module with strict=True), same input:
  mmseg            mmseg 1.2.2's SplitAttentionConv2d (skipped, with the reason, when mmseg is not installed)
  mmseg-compiled   torch.compile of that module
  ours-<backend>   resnest_fast.nn.SplitAttentionConv2d on every backend available for the device (the Triton
                   interpreter on CPU is a correctness tool, not a speed, and is left out)
Every provider's output (and, in train mode, the input's and the conv weight's gradients, by relative L2 error) is
checked against mmseg's module before it is timed; without mmseg, against the mmseg-style eager code of
benchmarks/providers.py.
Train mode uses batch statistics and updates the running ones, as in training; the gradient of the input is
computed too, as inside a network.

Shapes (--bench-shapes, as for test_bench_ops.py; benchmarks.stage_shapes.module_shapes): quick (default: two
small blocks), stages (the distinct split-attention inputs, with their dilation, of ResNeSt-101-D8 at the Cityscapes
512x1024 batch-2 and ADE20k 512x512 batch-4 crops) or all.

    pytest benchmarks/test_bench_module.py --benchmark-only                        # quick set, a few minutes
    pytest benchmarks/test_bench_module.py --benchmark-only --bench-shapes stages
Rows go to benchmarks/results/module.csv (with machine, versions and git revision) at the end of the session.
"""
import torch

from benchmarks import report
from benchmarks.providers import eager_post_conv
from benchmarks.stage_shapes import MODULE_QUICK, module_shapes
from resnest_fast.backend import available_backends
from resnest_fast.nn import SplitAttentionConv2d
from resnest_fast.testing.mmseg_reference import import_mmseg, mmseg_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OURS = [b for b in available_backends(DEVICE) if not (b == "triton" and DEVICE == "cpu")]
PROVIDERS = ["mmseg", "mmseg-compiled"] + [f"ours-{b}" for b in OURS]
# The quick shapes take milliseconds: more rounds steady their medians on a shared machine at little cost.
ROUNDS = {"quick": {"forward": 30, "full": 15}, "stage": {"forward": 10, "full": 5}}
WARMUP = 2
# fp32 against mmseg: the fused path and Inductor sum in another order. Outputs: largest error relative to the largest
# value. Gradients: relative L2 error, because a pre-activation within rounding of zero flips a ReLU mask and moves
# single elements of a train-mode gradient by a whole term (seen with mmseg-compiled at 2x64x128x256: one element of
# the input gradient 1 % off, 5e-5 of the norm), while a real error (a layout or a formula) is of order 1.
TOL = {"out": 1e-4, "grad": 1e-3}
_medians = {}


def pytest_generate_tests(metafunc):
    # the shape set comes from --bench-shapes (benchmarks/conftest.py), checked there; ids "<provider>-<shape>"
    shapes = module_shapes(metafunc.config.getoption("bench_shapes"))
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize("provider", PROVIDERS)
    metafunc.parametrize("shape_name,shape", list(shapes.items()), ids=list(shapes))


def _ours_block(shape, train):
    torch.manual_seed(0)
    block = SplitAttentionConv2d(shape.channels, shape.channels, 3, padding=shape.dilation,
                                 dilation=shape.dilation, radix=2, groups=1, reduction_factor=4)
    with torch.no_grad():  # away from BN's identity init, so that a wrong use of the statistics shows
        for bn in (block.bn0, block.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return block.to(DEVICE).train(train)


def _mmseg_block(ours, shape, train):
    resnest = import_mmseg("mmseg.models.backbones.resnest")
    block = resnest.SplitAttentionConv2d(shape.channels, shape.channels, 3, padding=shape.dilation,
                                         dilation=shape.dilation, groups=1, radix=2, reduction_factor=4,
                                         norm_cfg=dict(type="BN"))
    block.load_state_dict(ours.state_dict(), strict=True)
    return block.to(DEVICE).train(train)


class _EagerReference(torch.nn.Module):
    """mmseg's forward written out (benchmarks/providers.py) around our block's parameters: the oracle without
    mmseg."""

    def __init__(self, block):
        super().__init__()
        self.block = block
        self.conv = block.conv

    def forward(self, x):
        return eager_post_conv(self.block, self.conv(x))


def _oracle(shape, train):
    """The module the others are checked against: mmseg's, or mmseg-style eager code when mmseg is absent."""
    ours = _ours_block(shape, train)
    if mmseg_available():
        return _mmseg_block(ours, shape, train)
    return _EagerReference(ours)


def _provider(name, shape, train):
    """(callable x -> out, the conv weight whose gradient is checked)."""
    ours = _ours_block(shape, train)
    if name.startswith("ours-"):
        ours.backend = name.split("-", 1)[1]
        return ours, ours.conv.weight
    block = _mmseg_block(ours, shape, train)
    if name == "mmseg-compiled":
        torch._dynamo.reset()  # a fresh compile per shape and mode: no recompilation inside the timed calls
        return torch.compile(block), block.conv.weight
    return block, block.conv.weight


def _input(shape):
    torch.manual_seed(1)
    return torch.randn(shape.batch, shape.channels, shape.height, shape.width, device=DEVICE)


def _check(got, want, what, tol):
    err = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    if not err <= tol * scale:
        raise AssertionError(f"{what}: differs from the reference by {err:.3g} (allowed {tol * scale:.3g}); "
                             "not timing")


def _check_grad(got, want, what, tol):
    rel = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    if not rel <= tol:
        raise AssertionError(f"{what}: relative L2 error {rel:.3g} against the reference (allowed {tol:.3g}); "
                             "not timing")


def _synced(fn):
    if DEVICE != "cuda":
        return fn

    def call(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return call


def _rounds(shape_name, mode):
    return ROUNDS["quick" if shape_name in MODULE_QUICK else "stage"][mode]


def _record(benchmark, shape_name, shape, mode, provider):
    median_ms = benchmark.stats.stats.median * 1e3
    _medians[(shape_name, mode, provider)] = median_ms
    report.add("module", {"bench": "split_attention_block", "shape": shape_name,
                          "x_shape": "x".join(map(str, shape.x_shape)), "dilation": shape.dilation, "radix": 2,
                          "groups": 1, "dtype": "float32", "device": DEVICE, "mode": mode, "provider": provider,
                          "median_ms": round(median_ms, 3), "min_ms": round(benchmark.stats.stats.min * 1e3, 3),
                          "rounds": benchmark.stats.stats.rounds})


def test_forward(benchmark, provider, shape_name, shape):
    x = _input(shape)
    fn, _ = _provider(provider, shape, train=False)
    with torch.no_grad():
        _check(fn(x), _oracle(shape, train=False)(x), f"{shape_name} eval {provider}", TOL["out"])
        benchmark.pedantic(_synced(fn), args=(x,), rounds=_rounds(shape_name, "forward"), warmup_rounds=WARMUP)
    _record(benchmark, shape_name, shape, "forward", provider)


def test_full(benchmark, provider, shape_name, shape):
    x = _input(shape).requires_grad_(True)
    fn, weight = _provider(provider, shape, train=True)
    oracle = _oracle(shape, train=True)
    torch.manual_seed(2)
    grad = torch.randn(shape.batch, shape.channels, shape.height, shape.width, device=DEVICE)

    got = fn(x)
    got_dx, got_dw = torch.autograd.grad(got, (x, weight), grad)
    want = oracle(x)
    want_dx, want_dw = torch.autograd.grad(want, (x, oracle.conv.weight), grad)
    _check(got, want, f"{shape_name} train {provider} output", TOL["out"])
    _check_grad(got_dx, want_dx, f"{shape_name} train {provider} input gradient", TOL["grad"])
    _check_grad(got_dw, want_dw, f"{shape_name} train {provider} conv weight gradient", TOL["grad"])

    def step():
        fn(x).backward(grad)

    benchmark.pedantic(_synced(step), rounds=_rounds(shape_name, "full"), warmup_rounds=WARMUP)
    _record(benchmark, shape_name, shape, "full", provider)


def test_summary(benchmark, shape_name, shape):
    """Ratios of the medians measured above (mmseg's time / the provider's: above 1 is faster than mmseg)."""
    benchmark.pedantic(lambda: None, rounds=1)
    m = {(mode, p): v for (s, mode, p), v in _medians.items() if s == shape_name}
    for provider in [p for p in PROVIDERS if p != "mmseg"]:
        parts = []
        for mode in ("forward", "full"):
            for base in ("mmseg", "mmseg-compiled"):
                if base != provider and (mode, provider) in m and (mode, base) in m:
                    parts.append(f"{mode} {m[(mode, base)] / m[(mode, provider)]:.2f}x {base}")
        if parts:
            x_shape = "x".join(map(str, shape.x_shape))
            report.note(f"module {shape_name} ({x_shape}-d{shape.dilation}) {provider}: " + ", ".join(parts))
            report.add("module", {"bench": "ratios", "shape": shape_name, "provider": provider,
                                  "detail": "; ".join(parts)})
