"""benchmarks.gpu_check's pieces that decide a verdict, and the script's refusal without a GPU (the whole check
runs in CI as `bash scripts/gpu_check.sh --dry-run`)."""
import csv
import os
import subprocess
import sys
import time

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


def test_a_run_cut_short_keeps_the_finished_steps_and_lists_the_rest(tmp_path, monkeypatch):
    """A lent GPU has a time limit: once the deadline passes no further step starts, and what finished is already
    on disk with the summary saying what was left out."""
    clock = [1000.0]
    monkeypatch.setattr(gpu_check.time, "time", lambda: clock[0])
    row = {"check": "op", "backend": "cpu", "shape": "s", "dtype": "fp32", "layout": "nchw", "tensor": "gap",
           "max_err": "0", "bound": "1", "ok": True}

    def ops_then_the_deadline_passes(s):
        clock[0] = 2000.0
        return [row]

    def must_not_run(*args):
        raise AssertionError("a step started after the deadline")

    monkeypatch.setattr(gpu_check, "check_ops", ops_then_the_deadline_passes)
    for name in ("bench_ops", "bench_models", "train_memory"):
        monkeypatch.setattr(gpu_check, name, must_not_run)
    assert gpu_check.main(["all", "--dry-run", "--out", str(tmp_path), "--deadline", "1500"]) == 0
    with open(tmp_path / "gpu-ops.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["check"], r["tensor"], r["ok"]) for r in rows] == [("op", "gap", "True")]
    assert sorted(os.listdir(tmp_path)) == ["gpu-ops.csv", "summary.txt"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "correctness: 1/1 checks" in summary
    assert "skipped at the deadline: bench-ops, models, memory" in summary


def test_the_models_step_starts_no_model_after_the_deadline():
    s = gpu_check.Settings(dry_run=True, deadline=time.time() - 1)
    assert gpu_check.bench_models(s, ["deeplabv3", "fcn"], []) == []
    assert s.skipped == ["models deeplabv3", "models fcn"]


@pytest.mark.parametrize("budget", ["ten", "30", ""])
def test_a_bad_budget_is_one_line_and_exit_2(budget, tmp_path):
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--budget", budget], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path)})
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "--budget" in result.stderr
    assert not os.listdir(tmp_path)
