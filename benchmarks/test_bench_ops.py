"""Op level: each fused op against the mmseg code it replaces, providers side by side in one process.

Ops (benchmarks/providers.py; bn0 -> relu is part of both sides, as the fused ops apply it on the fly):
    pool-eval     y -> gap (B, C): bn0 with running statistics (eval), relu, view/sum, adaptive_avg_pool
    pool-train    the same with bn0's batch statistics (train: statistics, running-stat update, their gradient)
    combine-eval  (y, logits) -> out (B, C, H, W): bn0 (eval), relu, rSoftMax(logits), mul, sum
Modes:
    forward   under torch.no_grad
    backward  the backward alone: every round's forward runs in pytest-benchmark's untimed setup (a fresh graph
              each round), the timer covers torch.autograd.grad of y, bn0's weight and bias (and the logits)
    full      forward + that backward in one timed call
Providers: eager (mmseg's code), compiled (torch.compile of the same eager function, compiled before timing),
ours-<backend> for each backend of resnest_fast that runs on this machine's device (the C++ cpu / cuda kernels;
triton only on a GPU: never the interpreter; the pure-PyTorch "reference" backend is the eager decomposition
again and is left out). dtypes: fp32 and bf16.
Before anything is timed, each provider's output (and, for backward and full, its gradients) is compared with
eager run in float64 on the same (rounded) inputs and weights, by flash-attention's rule:
|got - ref64| <= 2 |eager - ref64| + floor * max(1, max |ref64|), floor 1e-4 in fp32 (see FLOOR) and
resnest_fast/testing/tolerances.py's FLOOR in bf16. A provider that disagrees fails its test and is not timed. The inputs keep
every bn0 pre-activation off ReLU's kink (away_from_the_kink), so gradients are compared, not tie-breaking.

Shapes (--bench-shapes, default quick; benchmarks.stage_shapes.op_shapes):
    quick   one small shape, y = 2x128x32x32 (radix 2): the whole suite stays short on 2 cores
    stages  the split-attention conv outputs of ResNeSt-101-D8 at the seed's crops, each distinct shape once
            (benchmarks.stage_shapes.resnest101_d8_blocks, checked against hooks on the real model by
            tests/benchmarks/test_stage_shapes.py): "city-*" Cityscapes 512x1024 batch 2, "ade-*" ADE20k 512x512
            batch 4 (per GPU)
    all     both
Rows go to benchmarks/results/ops.csv (quick; ops-stages.csv, ops-all.csv for the other sets): median and min ms,
speedup_vs_eager and speedup_vs_compiled of the same case, machine, versions, git revision.
Plot: python -m benchmarks.plot benchmarks/results/ops.csv -o benchmarks/results/ops.png

    pytest benchmarks/test_bench_ops.py --benchmark-only [--bench-shapes stages]
"""
import copy

import torch

from benchmarks import report
from benchmarks.providers import (away_from_the_kink, eager_combine_op, eager_pool_op, fused_combine_op,
                                  fused_pool_op, make_block)
from benchmarks.stage_shapes import op_shapes
from resnest_fast.backend import available_backends
from resnest_fast.testing.tolerances import FLOOR as LOW_PRECISION_FLOOR

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OURS = [b for b in available_backends(DEVICE.type)
        if b != "reference" and not (b == "triton" and DEVICE.type != "cuda")]
PROVIDERS = ["eager", "compiled"] + [f"ours-{b}" for b in OURS]
OPS = ("pool-eval", "pool-train", "combine-eval")
MODES = ("forward", "backward", "full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# fp32: bn0's weight / bias gradients are sums over B*H*W (up to 65536) terms, and the summation order alone (another
# reduction tree, torch.compile's, ours) moves them by more than twice eager's own error at the stage shapes
FLOOR = {torch.float32: 1e-4, torch.bfloat16: LOW_PRECISION_FLOOR[torch.bfloat16]}
# |bn0 pre-activation| >= gap/2 in the inputs (away_from_the_kink): far above fp32 rounding, and in bfloat16
# above what rounding y itself moves it (half an ulp of |y| < 8 is 2**-6, times bn0's slope, at most ~2.1 here)
KINK_GAP = {torch.float32: 1e-3, torch.bfloat16: 0.08}
ROUNDS = {"quick": {"forward": 20, "backward": 10, "full": 10}, "stages": {"forward": 10, "backward": 5, "full": 5}}


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    name = metafunc.config.getoption("bench_shapes")  # checked against stage_shapes.SHAPE_SETS by conftest.py
    shapes = op_shapes(name)
    global _csv_stem
    _csv_stem = "ops" if name == "quick" else f"ops-{name}"
    # one list in this order: the cached references below only ever hold the current (shape, dtype, op)
    cases = [(s, d, op, mode, p) for s in shapes for d in DTYPES for op in OPS for mode in MODES for p in PROVIDERS]
    metafunc.parametrize("case", [(s, shapes[s], d, op, mode, p) for s, d, op, mode, p in cases],
                         ids=["-".join(c) for c in cases])


# ------------------------------------------------------------------------------------------------- the cases


def _inputs(shape_block, dtype, op):
    b, k, h, w = shape_block.y_shape
    block = make_block(channels=shape_block.channels, radix=shape_block.radix, groups=shape_block.groups,
                       dtype=dtype, train=op == "pool-train").to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(b, k, h, w, generator=gen).to(DEVICE, dtype)
    logits = torch.randn(b, k, generator=gen).to(DEVICE, dtype) if op.startswith("combine") else None
    y = away_from_the_kink(block, y, KINK_GAP[dtype])
    out_shape = (b, k // shape_block.radix) + ((h, w) if op.startswith("combine") else ())
    grad_out = torch.randn(out_shape, generator=gen).to(DEVICE, dtype)
    return block, y, logits, grad_out


_compiled = {}


def _compiled_function(key, block):
    """torch.compile of the eager function, kept for the modes of one (shape, dtype, op): forward (no-grad graph),
    backward and full (one training graph) then compile twice instead of three times. The block it closes over
    is returned: the gradients are taken with respect to its parameters."""
    if _compiled.get("key") != key:
        _compiled.clear()
        torch._dynamo.reset()  # a fresh cache for every case: no recompilation limit reached, no stale guards
        _compiled.update(key=key, block=block, fn=torch.compile(_function("eager", block, key[2])))
    return _compiled["block"], _compiled["fn"]


def _function(provider, block, op):
    pool = op.startswith("pool")
    if provider == "eager":
        return (lambda y, logits: eager_pool_op(block, y)) if pool else (lambda y, logits: eager_combine_op(block, y,
                                                                                                           logits))
    block.backend = provider.split("-", 1)[1]
    return (lambda y, logits: fused_pool_op(block, y)) if pool else (lambda y, logits: fused_combine_op(block, y,
                                                                                                         logits))


def _wrt(block, y, logits):
    return [t for t in (y, logits, block.bn0.weight, block.bn0.bias) if t is not None]


def _run(fn, block, y, logits, grad_out, grads):
    """Output (and gradients of y, logits, bn0's weight and bias) of one call."""
    if not grads:
        with torch.no_grad():
            return [fn(y, logits)]
    y = y.detach().requires_grad_(True)
    logits = None if logits is None else logits.detach().requires_grad_(True)
    out = fn(y, logits)
    return [out.detach()] + list(torch.autograd.grad(out, _wrt(block, y, logits), grad_out))


_reference_cache = {}


def _references(key, block, y, logits, grad_out, grads):
    """(eager in the case's dtype, eager in float64) results, cached for the current case only."""
    if key not in _reference_cache:
        _reference_cache.clear()
        twin = copy.deepcopy(block)  # the provider's own block keeps its running statistics untouched
        same = _run(_function("eager", twin, key[2]), twin, y, logits, grad_out, True)
        block64 = copy.deepcopy(block).double()
        ref64 = _run(_function("eager", block64, key[2]), block64, y.double(), None if logits is None else
                     logits.double(), grad_out.double(), True)
        _reference_cache[key] = (same, ref64)
    same, ref64 = _reference_cache[key]
    return (same, ref64) if grads else (same[:1], ref64[:1])


def _check(provider, got, same, ref64, dtype):
    names = ["output", "grad y"] + (["grad logits"] if len(got) == 5 else []) + ["grad bn0.weight", "grad bn0.bias"]
    for name, g, s, r in zip(names, got, same, ref64):
        err = (g.double() - r).abs().max().item()
        ref_err = (s.double() - r).abs().max().item()
        bound = 2 * ref_err + FLOOR[dtype] * max(1.0, r.abs().max().item())
        assert err <= bound, (f"{provider} {name} ({dtype}): max error {err:.3g} against float64 eager > {bound:.3g} "
                              f"(eager in {dtype}: {ref_err:.3g}); not timed")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- recording

_groups = {}  # (shape, dtype, op, mode) -> {provider: row}
_csv_stem = "ops"  # ops.csv for the quick set, ops-stages.csv / ops-all.csv: one set's run never replaces another's


def _record(benchmark, shape_name, shape_block, dtype_name, op, mode, provider):
    stats = benchmark.stats.stats
    row = {"bench": "splat_op", "op": op, "mode": mode, "shape": shape_name,
           "y_shape": "x".join(map(str, shape_block.y_shape)), "radix": shape_block.radix,
           "groups": shape_block.groups, "dtype": dtype_name, "device": DEVICE.type, "provider": provider,
           "median_ms": round(stats.median * 1e3, 4), "min_ms": round(stats.min * 1e3, 4), "rounds": stats.rounds,
           "speedup_vs_eager": "", "speedup_vs_compiled": ""}
    report.add(_csv_stem, row)
    group = _groups.setdefault((shape_name, dtype_name, op, mode), {})
    group[provider] = row
    # every row of the case gets its ratios as soon as the eager / compiled medians are known (the CSV is written
    # at the end of the session)
    for r in group.values():
        for base in ("eager", "compiled"):
            if base in group:
                r[f"speedup_vs_{base}"] = round(group[base]["median_ms"] / r["median_ms"], 3)
    if len(group) == len(PROVIDERS):
        parts = [f"{p} {group[p]['median_ms']:.3f} ms" for p in PROVIDERS]
        ratios = [f"{p}: {group[p]['speedup_vs_eager']}x eager, {group[p]['speedup_vs_compiled']}x compiled"
                  for p in PROVIDERS if p.startswith("ours")]
        report.note(f"ops {shape_name} {dtype_name} {op} {mode}: " + ", ".join(parts) + "; " + "; ".join(ratios))


def test_op(benchmark, case):
    shape_name, shape_block, dtype_name, op, mode, provider = case
    dtype = DTYPES[dtype_name]
    block, y, logits, grad_out = _inputs(shape_block, dtype, op)
    key = (shape_name, dtype_name, op)
    if provider == "compiled":
        block, fn = _compiled_function(key, block)
    else:
        fn = _function(provider, block, op)
    grads = mode != "forward"
    # the same numbers, or no timing (this call also compiles the compiled provider)
    got = _run(fn, block, y, logits, grad_out, grads)
    same, ref64 = _references(key, block, y, logits, grad_out, grads)
    _check(provider, got, same, ref64, dtype)
    del got

    rounds = ROUNDS["quick" if shape_name == "quick" else "stages"][mode]
    benchmark.group = f"{op} {mode} {shape_name} {dtype_name}"
    if mode == "forward":
        def forward():
            fn(y, logits)
            _sync()

        with torch.no_grad():
            benchmark.pedantic(forward, rounds=rounds, warmup_rounds=2)
    else:
        y.requires_grad_(True)
        if logits is not None:
            logits.requires_grad_(True)
        wrt = _wrt(block, y, logits)

        def backward(out):
            torch.autograd.grad(out, wrt, grad_out)
            _sync()

        def setup():  # untimed: a fresh graph for every round
            out = fn(y, logits)
            _sync()
            return (out,), {}

        def full():
            torch.autograd.grad(fn(y, logits), wrt, grad_out)
            _sync()

        if mode == "backward":
            benchmark.pedantic(backward, setup=setup, rounds=rounds, warmup_rounds=2)
        else:
            benchmark.pedantic(full, rounds=rounds, warmup_rounds=2)
    _record(benchmark, shape_name, shape_block, dtype_name, op, mode, provider)
