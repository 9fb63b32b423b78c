"""The op-level benchmark's pieces that decide what is timed and reported (its shape sets: test_stage_shapes.py):
the accuracy gate before timing, the speedup columns, the eager op pieces, and the plot of ops.csv."""
import csv
import types

import pytest
import torch

from benchmarks import plot, report
from benchmarks import test_bench_ops as bench
from benchmarks.providers import (away_from_the_kink, eager_combine_op, eager_pool_op, eager_post_conv, fused_combine_op,
                                  fused_pool_op, make_block)
from benchmarks.stage_shapes import Block, op_shapes
from resnest_fast.backend import available_backends
from tests.benchmarks.refusals import refused


def test_no_interpreter_and_no_reference_among_the_timed_backends():
    assert "reference" not in bench.OURS
    if not torch.cuda.is_available():
        assert "triton" not in bench.OURS


@pytest.mark.parametrize("radix,groups", [(2, 1), (4, 2)])
def test_eager_op_pieces_compute_what_the_fused_ops_compute(radix, groups):
    """The eager pieces against the ops' pure-PyTorch references (independent code: resnest_fast.ops)."""
    from resnest_fast.ops import splat_combine_reference, splat_pool_reference

    block = make_block(channels=16, radix=radix, groups=groups, dtype=torch.float64)
    bn = block.bn0
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    y = torch.randn(2, 16 * radix, 5, 7, dtype=torch.float64)
    logits = torch.randn(2, 16 * radix, dtype=torch.float64)
    torch.testing.assert_close(eager_pool_op(block, y), splat_pool_reference(y, scale, shift, radix))
    torch.testing.assert_close(eager_combine_op(block, y, logits),
                               splat_combine_reference(y, logits, scale, shift, radix, groups))
    # and the whole forward composed of the pieces is still the module's
    block.backend = "reference"
    torch.testing.assert_close(eager_post_conv(block, y), block.attend(y))
    torch.testing.assert_close(fused_pool_op(block, y), eager_pool_op(block, y))
    torch.testing.assert_close(fused_combine_op(block, y, logits), eager_combine_op(block, y, logits))


def test_check_lets_eager_accuracy_through_and_stops_a_wrong_result():
    ref64 = [torch.linspace(-1, 1, 50, dtype=torch.float64)]
    eager = [ref64[0].to(torch.bfloat16)]
    bench._check("p", [ref64[0].float().to(torch.bfloat16)], eager, ref64, torch.bfloat16)
    wrong = [eager[0] + 0.1]
    with pytest.raises(AssertionError, match="not timed"):
        bench._check("p", wrong, eager, ref64, torch.bfloat16)
    ref = ref64[0]
    with pytest.raises(AssertionError, match="grad y"):  # fp32: eager's own error plus 1e-5 of the scale
        bench._check("p", [ref.float(), ref.float() + 1e-3], [ref.float()] * 2, [ref] * 2, torch.float32)


def _fake_benchmark(median_s):
    stats = types.SimpleNamespace(median=median_s, min=median_s / 2, rounds=3)
    return types.SimpleNamespace(stats=types.SimpleNamespace(stats=stats))


def test_speedups_and_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(report, "RESULTS", {})
    monkeypatch.setattr(report, "SUMMARY", [])
    monkeypatch.setattr(bench, "_groups", {})
    monkeypatch.setattr(bench, "PROVIDERS", ["eager", "compiled", "ours-cpu"])
    monkeypatch.setattr(bench, "_csv_stem", "ops")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)  # report.flush names the file after it
    block = op_shapes("quick")["quick"]
    for dtype in ("fp32", "bf16"):
        for provider, seconds in (("ours-cpu", 0.001), ("eager", 0.010), ("compiled", 0.004)):
            bench._record(_fake_benchmark(seconds), "quick", block, dtype, "pool-eval", "forward", provider)
    rows = report.RESULTS["ops"]
    ours = [r for r in rows if r["provider"] == "ours-cpu"]
    assert [(r["speedup_vs_eager"], r["speedup_vs_compiled"]) for r in ours] == [(10.0, 4.0), (10.0, 4.0)]
    assert [r["speedup_vs_eager"] for r in rows if r["provider"] == "compiled"] == [2.5, 2.5]
    assert len(report.SUMMARY) == 2 and "10.0x eager" in report.SUMMARY[0]

    report.flush(str(tmp_path))
    path = tmp_path / "ops.csv"
    with path.open() as f:
        written = list(csv.DictReader(f))
    assert {"git", "machine", "torch", "speedup_vs_eager", "speedup_vs_compiled"} <= set(written[0])
    png = tmp_path / "ops.png"
    plot.main([str(path), "-o", str(png)])
    assert png.stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp*"))


def test_plot_refuses_rows_without_speedups(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ops.csv"
    path.write_text("bench,op,mode,shape,provider,dtype,speedup_vs_eager,machine,git\n"
                    "splat_op,pool-eval,forward,quick,ours-cpu,fp32,,m,g\n")
    refused(capsys, plot.main, [str(path), "-o", str(tmp_path / "x.png")], "no op-level rows with a speedup")


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="C++ kernels not built")
def test_a_benchmark_case_runs_end_to_end(monkeypatch):
    """One tiny case through the same code path the benchmark takes (check, then timing), with a stand-in timer."""
    monkeypatch.setattr(report, "RESULTS", {})
    monkeypatch.setattr(bench, "_groups", {})
    monkeypatch.setattr(bench, "_csv_stem", "ops")
    calls = []

    class Timer:
        group = None
        stats = _fake_benchmark(0.001).stats

        def pedantic(self, target, args=(), setup=None, rounds=1, warmup_rounds=0, **kw):
            for _ in range(rounds + warmup_rounds):
                a, k = setup() if setup else (args, {})
                target(*a, **k)
            calls.append(rounds)

    tiny = Block("tiny", 2, 8, 4, 6)
    for mode in bench.MODES:
        bench.test_op(Timer(), ("tiny", tiny, "bf16", "pool-train", mode, "ours-cpu"))
    assert calls == [10, 5, 5]
    assert [r["mode"] for r in report.RESULTS["ops"]] == list(bench.MODES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("train", [False, True])
def test_inputs_keep_off_the_relu_kink(dtype, train):
    """Every bn0 pre-activation of the benchmark input, computed in float64 the way BatchNorm does, is at least
    half the gap away from 0, and only a few elements (those that were closer) changed."""
    block = make_block(channels=32, dtype=dtype, train=train)
    torch.manual_seed(3)
    y = (torch.randn(2, 64, 40, 40) * 3).to(dtype)
    gap = bench.KINK_GAP[dtype]
    moved = away_from_the_kink(block, y, gap)
    assert not moved.requires_grad  # an input, not a function of bn0's parameters
    bn = block.bn0
    y64 = moved.double()
    if train:
        var, mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    else:
        var, mean = bn.running_var.double(), bn.running_mean.double()
    pre = torch.nn.functional.batch_norm(y64, mean, var, bn.weight.double(), bn.bias.double(), False, 0.0, bn.eps)
    assert pre.abs().min().item() >= gap / 2
    changed = (moved != y).float().mean().item()
    assert 0 < changed < (0.01 if dtype == torch.float32 else 0.1)
