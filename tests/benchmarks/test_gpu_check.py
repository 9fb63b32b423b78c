"""benchmarks.gpu_check's pieces that decide a verdict, and the script's refusal without a GPU (the whole check
runs in CI as `bash scripts/gpu_check.sh --dry-run`)."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu_check
from tests.benchmarks.refusals import refused

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
def test_the_ops_providers_do_the_same_work():
    """bench-ops (and the sweep) time each op per provider: every provider must compute what the eager reference
    does, or the timings would compare different work (torch.compile of eager is left out: compiling it here would
    take the time of the rest)."""
    from benchmarks.providers import make_block

    s = gpu_check.Settings(dry_run=True)
    blk = next(iter(s.stage_shapes.values()))
    block = make_block(channels=blk.channels, radix=blk.radix, groups=blk.groups)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(blk.y_shape, generator=gen)
    logits = torch.randn(blk.y_shape[:2], generator=gen)
    with torch.no_grad():
        ops = gpu_check.stage_ops(s, blk, block, y, logits, gen, s.backends())
        assert list(ops) == ["pool-eval", "combine-eval", "bn-stats", "backward-reduce", "backward-input"]
        y_bytes = y.numel() * 4
        assert ops["bn-stats"][0] == y_bytes and ops["backward-input"][0] == 2 * y_bytes + y_bytes // blk.radix
        assert ops["pool-eval"][0] == y_bytes and ops["combine-eval"][0] == y_bytes + y_bytes // blk.radix
        for op, (_, providers) in ops.items():
            ours = {f"ours-{b}" for b in s.backends()}
            assert set(providers) == {"eager"} | ours | ({"compiled"} if op.endswith("-eval") else set()), op
            want = providers["eager"]()
            want = want if isinstance(want, tuple) else (want,)
            for name in ours:
                got = providers[name]()
                got = got if isinstance(got, tuple) else (got,)
                for g, w in zip(got, want, strict=True):
                    torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=f"{op} {name}")


def test_sanitize_runs_every_op_of_each_gpu_backend_cuda_first(monkeypatch):
    """The workload compute-sanitizer watches: the CUDA kernels, then Triton's, each with the module's training step
    (bn_stats and the fused backward); CPU backends are not its business, and without a GPU backend it says so."""
    s = gpu_check.Settings(dry_run=True)
    calls = []
    monkeypatch.setattr(gpu_check.Settings, "backends", lambda self: ["reference", "cpu", "triton", "cuda"])
    monkeypatch.setattr(gpu_check, "_pool_and_combine",
                        lambda t, r, g, backend, layout: calls.append((backend, layout)))
    monkeypatch.setattr(gpu_check, "check_module_training", lambda s, backends: calls.append((*backends, "train")))
    gpu_check.sanitize(s)
    per_backend = len(gpu_check.DTYPES) * 2 * min(3, len(s.small_shapes)) + 1
    assert [c[0] for c in calls] == ["cuda"] * per_backend + ["triton"] * per_backend
    assert {c[1] for c in calls} == {"nchw", "channels_last", "train"}
    assert calls[per_backend - 1] == ("cuda", "train") and calls[-1] == ("triton", "train")
    monkeypatch.setattr(gpu_check.Settings, "backends", lambda self: ["reference", "cpu"])
    with pytest.raises(SystemExit, match="no GPU backend"):
        gpu_check.sanitize(s)


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
    assert "skipped at the deadline: bench-ops, memory, models" in summary


@pytest.mark.parametrize("deadline", ["nan", "-1", "inf", "0", "soon"])
def test_a_deadline_that_is_no_time_is_refused(deadline, capsys, tmp_path):
    """nan and -1 ran no step and exited 0, as if the check had passed."""
    refused(capsys, gpu_check.main, ["all", "--dry-run", "--out", str(tmp_path), "--deadline", deadline],
            "--deadline", repr(deadline))
    assert not os.listdir(tmp_path)


def test_ctrl_c_writes_the_finished_steps_with_a_partial_summary(tmp_path, monkeypatch, capsys):
    row = {"check": "op", "backend": "cpu", "shape": "s", "dtype": "fp32", "layout": "nchw", "tensor": "gap",
           "max_err": "0", "bound": "1", "ok": True}

    def ctrl_c(s):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "check_ops", lambda s: [row])
    monkeypatch.setattr(gpu_check, "bench_ops", ctrl_c)
    assert gpu_check.main(["all", "--dry-run", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err) and "partial results" in err[-1], err
    assert sorted(os.listdir(tmp_path)) == ["gpu-ops.csv", "summary.txt"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "correctness: 1/1 checks" in summary
    assert "interrupted (Ctrl-C) during bench-ops: partial results" in summary


def test_the_models_step_starts_no_model_after_the_deadline():
    s = gpu_check.Settings(dry_run=True, deadline=time.time() - 1)
    assert gpu_check.bench_models(s, ["deeplabv3", "fcn"], []) == []
    assert s.skipped == ["models deeplabv3", "models fcn"]


@pytest.mark.parametrize("flag, value", [("--budget", "ten"), ("--budget", "30"), ("--budget", ""),
                                         ("--only", ""), ("--only", "tests"), ("--only", "check,"),
                                         ("--only", "check,,pytest"), ("--only", "sweep,tune")])
def test_a_bad_budget_or_step_list_is_one_line_and_exit_2(flag, value, tmp_path):
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", flag, value], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path)})
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and flag in result.stderr
    assert not os.listdir(tmp_path)


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for a GPU machine's python: answers the script's probes, records each command, sleeps where told
echo "$*" >>"$FAKE_DIR/calls"
case "$*" in
  *get_device_capability*) echo 9.0 ;;
  "-c import xdist") exit 1 ;;
  "-c "*) echo "torch 2.11.0 CUDA 13.0 a fake GPU" ;;
  "-m benchmarks.gpu_check all"*) echo "check: a row measured"; sleep "${FAKE_CHECK_SECONDS:-0}"
                                  exit "${FAKE_CHECK_EXIT:-0}" ;;
  "-m benchmarks.gpu_check sweep"*) echo "sweep of the Triton launch geometry: (fake)" >"$OUT/summary-sweep.txt" ;;
esac
exit 0
"""


def _fake_gpu_machine(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "compute-sanitizer"):
        path = bin_dir / name
        path.write_text(FAKE_PYTHON)
        path.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "FAKE_DIR": str(tmp_path), "PYTHON": str(bin_dir / "python"), "OUT": str(out),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, out


def _calls(tmp_path):
    return (tmp_path / "calls").read_text().splitlines()


def test_the_gpu_branch_runs_every_step_and_collects_only_the_gpu_test_files(tmp_path):
    env, out = _fake_gpu_machine(tmp_path)
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--skip-build"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all steps passed" in result.stdout
    calls = _calls(tmp_path)
    check = [c for c in calls if c.startswith("-m benchmarks.gpu_check all")]
    assert check == [f"-m benchmarks.gpu_check all --out {out}"]  # no deadline without a budget
    assert sum(c.startswith("--tool memcheck") or c.startswith("--tool racecheck") for c in calls) == 2
    pytest_call = next(c.split() for c in calls if c.startswith("-m pytest"))
    files = sorted(a for a in pytest_call if a.endswith(".py"))
    holding = sorted(os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(os.path.join(ROOT, "tests"))
                     for f in fs if f.startswith("test_") and f.endswith(".py")
                     and "needs_cuda" in open(os.path.join(d, f)).read())
    assert files == holding and "tests/ops/test_splat_gpu_and_heavy.py" in files
    assert "needs_cuda" in pytest_call and "-n" not in pytest_call  # no xdist on this fake machine
    log = (out / "gpu_check.log").read_text()
    for name in ("info", "check", "sanitize-memcheck", "sanitize-racecheck", "pytest"):
        assert f"== {name} (exit 0" in log
    assert not any("gpu_check sweep" in c for c in calls)  # only when asked for


def test_the_sweep_runs_when_named_after_the_other_steps_and_its_summary_is_shown(tmp_path):
    env, out = _fake_gpu_machine(tmp_path)
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--skip-build", "--only", "check,sweep", "--budget",
                             "600"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [c for c in _calls(tmp_path) if c.startswith("-m benchmarks.gpu_check")]
    assert [c.split()[2] for c in calls] == ["all", "sweep"]
    sweep = calls[1].split()
    assert sweep[3:5] == ["--out", str(out)] and "--deadline" in sweep
    assert "sweep of the Triton launch geometry: (fake)" in result.stdout


def test_the_budget_stops_a_long_check_and_still_runs_the_rest_in_time(tmp_path):
    env, out = _fake_gpu_machine(tmp_path)
    env["FAKE_CHECK_SECONDS"] = "1000"
    start = time.time()
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--skip-build", "--budget", "60"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    took = time.time() - start
    assert result.returncode == 1, result.stdout + result.stderr
    assert took <= 60, took
    assert "stopped at its share of the budget" in result.stdout
    assert "cut short by the budget: check" in result.stdout
    check = next(c.split() for c in _calls(tmp_path) if c.startswith("-m benchmarks.gpu_check all"))
    deadline = float(check[check.index("--deadline") + 1])
    assert start + 15 <= deadline <= start + 31  # half of the time left once the build is done
    assert any(c.startswith("-m pytest") for c in _calls(tmp_path))  # the tests still had their share


def test_model_rows_are_on_disk_before_the_model_step_ends(tmp_path, monkeypatch):
    """The model step is the longest: a run stopped inside it keeps the heads it finished."""
    ops_row = {"check": "op", "backend": "cpu", "shape": "s", "dtype": "fp32", "layout": "nchw", "tensor": "gap",
               "max_err": "0", "bound": "1", "ok": True}
    model_row = {"model": "fcn", "input": "1x3x8x8", "precision": "fp32", "provider": "ours", "fps": 1.0,
                 "ms_per_image": 1000.0, "logits_max_diff": "0", "ok": True}

    def one_head_then_killed(s, heads, compile_heads, progress=None):
        progress([model_row])
        raise SystemExit(137)

    monkeypatch.setattr(gpu_check, "check_ops", lambda s: [ops_row])
    monkeypatch.setattr(gpu_check, "bench_ops", lambda s: [])
    monkeypatch.setattr(gpu_check, "train_memory", lambda s: [])
    monkeypatch.setattr(gpu_check, "bench_models", one_head_then_killed)
    with pytest.raises(SystemExit):
        gpu_check.main(["all", "--dry-run", "--out", str(tmp_path)])
    with open(tmp_path / "gpu-models.csv") as f:
        assert [(r["model"], r["provider"], r["fps"]) for r in csv.DictReader(f)] == [("fcn", "ours", "1.0")]
    assert "fcn 1x3x8x8 fp32 ours: 1.0 fps" in (tmp_path / "summary.txt").read_text()


def test_only_runs_the_steps_it_names(tmp_path):
    env, out = _fake_gpu_machine(tmp_path)
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--only", "sanitize,pytest"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(tmp_path)
    assert not any(c.startswith("-m pip install") or c.startswith("-m benchmarks.gpu_check all") for c in calls)
    assert any(c.startswith("--tool memcheck") for c in calls) and any(c.startswith("-m pytest") for c in calls)


def test_the_summary_says_which_goals_the_measured_rows_meet():
    """Hand-made rows whose verdicts are known: 80 % of the copy, 3x eager and 1.3x compile met exactly at the bound
    and missed just below it; the model and memory goals likewise."""
    def op(op, provider, ms, pct=""):
        return {"shape": "city-layer3", "y": "2x512x64x128", "dtype": "bf16", "op": op, "provider": provider,
                "ms": ms, "gb_s": "", "pct_of_copy": pct}

    bench = [op("copy", "torch", 0.5, 100.0),
             op("pool-eval", "eager", 3.0, 20.0), op("pool-eval", "compiled", 1.3, 60.0),
             op("pool-eval", "ours-cuda", 1.0, 80.0), op("pool-eval", "ours-triton", 1.01, 79.9),
             op("post-conv-train-fwd-bwd", "eager", 9.0), op("post-conv-train-fwd-bwd", "compiled", 4.0),
             op("post-conv-train-fwd-bwd", "ours-cuda", 3.0),
             {**op("conv-pool-eval-nchw", "ours-triton-conv-pool", 1.0), "tflop_s": 50.0}]
    models = [{"model": "deeplabv3", "input": "1x3x1024x2048", "precision": "bf16-autocast", "provider": p, "fps": f,
               "ok": ok} for p, f, ok in (("reference-backend", 10.0, True), ("ours", 12.0, True),
                                          ("ours-compiled", 11.9, True), ("ours-broken", 99.0, False))]
    models.append({**models[1], "precision": "fp32", "fps": 1.0})
    memory = [{"model": "deeplabv3", "input": "2x3x512x1024", "provider": "reference-backend", "peak_mib": 1000.0,
               "vs_reference": 1.0},
              {"model": "deeplabv3", "input": "2x3x512x1024", "provider": "ours", "peak_mib": 851.0,
               "vs_reference": 0.851}]
    lines = gpu_check.goals({"bench-ops": bench, "models": models, "memory": memory})
    assert lines == [
        "goals:",
        "  >= 80 % of the copy bandwidth: 1/2 met; missed: city-layer3 bf16 pool-eval ours-triton 79.9 %",
        "  >= 3x eager: 2/3 met; missed: city-layer3 bf16 pool-eval ours-triton 2.97x",
        "  >= 1.3x torch.compile of eager: 2/3 met; missed: city-layer3 bf16 pool-eval ours-triton 1.29x",
        "  deeplabv3 bf16-autocast fps >= 1.2x the reference backend's: 1/2 met; missed: ours-compiled 1.19x",
        "  training peak memory <= 0.85x the reference backend's: 0/1 met; missed: deeplabv3 2x3x512x1024 0.851x",
    ]
    assert gpu_check.goals({}) == []
    many = [op("pool-eval", f"ours-{i}", 1.0, float(i)) for i in range(8)]  # every one missed, 6 of them shown
    assert gpu_check.goals({"bench-ops": many}) == [
        "goals:", "  >= 80 % of the copy bandwidth: 0/8 met; missed: " + ", ".join(
            f"city-layer3 bf16 pool-eval ours-{i} {i} %" for i in range(6)) + " and 2 more"]


def test_the_sweep_geometry_reaches_the_launches_and_is_undone_after():
    """What the Triton launcher launches (recorded, not run) under a swept geometry: tiles of at most the swept
    number of elements on the swept number of warps; afterwards the launchers' own geometry again."""
    from resnest_fast.kernels import splat as tk

    x = torch.randn(2, 2 * 64, 128, 128)  # enough tiles of 2048 elements for 4 programs per SM: none shrunk

    def first_launch():
        with tk.record_launches() as launches:
            tk.splat_pool(x, None, None, 2, True)
        kernel, programs, num_warps, args, constexprs = launches[0]
        return kernel.__name__, constexprs["BLOCK_C"] * constexprs["BLOCK_P"], num_warps

    default = first_launch()
    assert default == ("_pool_partial_kernel", 2048, 4)
    with gpu_check.triton_geometry(1024, 16, 8):
        assert first_launch() == ("_pool_partial_kernel", 1024, 8)
    assert first_launch() == default and (tk.TILE_ELEMENTS, tk.TARGET_PROGRAMS_PER_SM, tk.NUM_WARPS) == (2048, 8, 4)


def test_the_sweep_summary_names_the_ops_another_geometry_runs_faster():
    def row(op, tile, ms, default=False):
        return {"shape": "city-layer3", "dtype": "fp32", "op": op, "tile_elements": tile, "programs_per_sm": 8,
                "num_warps": 4, "default": default, "ms": ms}

    rows = [row("pool-eval", 2048, 1.0, True), row("pool-eval", 4096, 0.96),  # within 5 %: near
            row("combine-eval", 2048, 1.0, True), row("combine-eval", 1024, 0.8)]  # 1.25x faster elsewhere
    assert gpu_check.sweep_summary(rows) == [
        "sweep of the Triton launch geometry: the heuristic within 1.05x of the best for 1/2 ops; better: "
        "city-layer3 fp32 combine-eval 1.25x faster at tile 1024, 8/SM, 4 warps"]
    assert gpu_check.sweep_summary([]) == []


def test_the_sweep_step_writes_its_rows_and_its_own_summary(tmp_path, monkeypatch):
    """The sweep, run after the check in a call of its own (interpreted here, at a tiny shape and two geometries),
    writes gpu-sweep.csv and summary-sweep.txt and leaves the check's summary.txt as it was."""
    from benchmarks.stage_shapes import Block

    if "triton" not in gpu_check.Settings(dry_run=True).backends():
        pytest.skip("Triton is not available here")
    real_init = gpu_check.Settings.__init__

    def tiny(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.stage_shapes = {"tiny": Block("tiny", 2, 4, 3, 5)}
        self.warmup, self.op_iters = 0, 1

    monkeypatch.setattr(gpu_check.Settings, "__init__", tiny)
    (tmp_path / "summary.txt").write_text("the check's summary\n")
    assert gpu_check.main(["sweep", "--dry-run", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "summary.txt").read_text() == "the check's summary\n"
    with open(tmp_path / "gpu-sweep.csv") as f:
        rows = list(csv.DictReader(f))
    ops = {"pool-eval", "combine-eval", "bn-stats", "backward-reduce", "backward-input"}
    configs = {(r["tile_elements"], r["programs_per_sm"], r["num_warps"]) for r in rows}
    assert {r["op"] for r in rows} == ops and configs == {("2048", "8", "4"), ("1024", "8", "4")}
    assert len(rows) == len(ops) * 2 * 2  # ops x dtypes x geometries
    assert {(r["op"], r["dtype"]) for r in rows if r["default"] == "True"} == {(o, d) for o in ops
                                                                              for d in ("fp32", "bf16")}
    assert "sweep of the Triton launch geometry" in (tmp_path / "summary-sweep.txt").read_text()


def _script(env, *args, timeout=120):
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line_refusal(result, *words):
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_an_out_that_is_a_file_or_holds_an_earlier_run_is_refused_at_once(tmp_path):
    """OUT=<a file> went on to build and check, then failed as the check wrote its first CSV; an earlier run's
    results were replaced without being asked."""
    env, out = _fake_gpu_machine(tmp_path)
    (tmp_path / "a-file").write_text("mine\n")
    for where, words in ((tmp_path / "a-file", ["is not a folder"]),
                         (tmp_path / "a-file" / "out", ["cannot be created", "a-file is not a folder"])):
        _one_line_refusal(_script({**env, "OUT": str(where)}, "--skip-build"), f"OUT '{where}'", *words)
    out.mkdir()
    (out / "summary.txt").write_text("the earlier run\n")
    _one_line_refusal(_script(env, "--skip-build"), "summary.txt", "--overwrite")
    assert not (tmp_path / "calls").exists()  # nothing ran
    assert (out / "summary.txt").read_text() == "the earlier run\n" and os.listdir(out) == ["summary.txt"]
    result = _script(env, "--skip-build", "--overwrite")
    assert result.returncode == 0, result.stdout + result.stderr
    check = next(c for c in _calls(tmp_path) if c.startswith("-m benchmarks.gpu_check all"))
    assert check == f"-m benchmarks.gpu_check all --out {out} --overwrite"


def test_a_rerun_with_only_replaces_its_steps_results(tmp_path):
    env, out = _fake_gpu_machine(tmp_path)
    out.mkdir()
    (out / "summary.txt").write_text("the earlier run\n")
    result = _script(env, "--skip-build", "--only", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    check = next(c for c in _calls(tmp_path) if c.startswith("-m benchmarks.gpu_check all"))
    assert check.endswith(" --overwrite")


def test_an_earlier_summary_is_not_shown_as_this_runs(tmp_path):
    """The check failing before it wrote its summary: the summary.txt of an earlier run was printed as this run's."""
    env, out = _fake_gpu_machine(tmp_path)
    out.mkdir()
    (out / "summary.txt").write_text("correctness: 99/99 checks within the rule (an earlier run)\n")
    result = _script({**env, "FAKE_CHECK_EXIT": "1"}, "--skip-build", "--only", "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED (exit 1)" in result.stdout and "an earlier run" not in result.stdout


@pytest.mark.parametrize("budget, seconds", [("0100", 100), ("090", 90), ("000000000120", 120)])
def test_a_budget_is_decimal_whatever_its_leading_zeros(budget, seconds, tmp_path):
    """0100 was read as octal (64 s), 090 as a bash arithmetic error."""
    env, out = _fake_gpu_machine(tmp_path)
    start = time.time()
    result = _script(env, "--skip-build", "--only", "check", "--budget", budget)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    check = next(c.split() for c in _calls(tmp_path) if c.startswith("-m benchmarks.gpu_check all"))
    deadline = float(check[check.index("--deadline") + 1])
    assert start + seconds / 2 - 5 <= deadline <= time.time() + seconds / 2  # half of the budget left


@pytest.mark.parametrize("budget", ["0059", "1e3", "-100", "1000000000"])
def test_a_budget_out_of_range_is_one_line(budget, tmp_path):
    env, out = _fake_gpu_machine(tmp_path)
    _one_line_refusal(_script(env, "--skip-build", "--budget", budget), "--budget", f"'{budget}'")
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize("budget", [[], ["--budget", "600"]], ids=["no-budget", "budget"])
def test_ctrl_c_stops_the_step_keeps_its_output_and_leaves_no_temporary_file(budget, tmp_path):
    """Ctrl-C, as the terminal sends it to the script's process group (a step under a budget runs under `timeout`,
    in a group of its own): one line, exit 130, the step's output so far in the log, no temporary file left."""
    env, out = _fake_gpu_machine(tmp_path)
    (tmp_path / "tmp").mkdir()
    env.update(FAKE_CHECK_SECONDS="300", TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.Popen(["bash", "scripts/gpu_check.sh", "--skip-build", *budget], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not any(c.startswith("-m benchmarks.gpu_check all") for c in
                      ((tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else [])):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout + stderr
    assert stderr.count("\n") == 1 and "interrupted (Ctrl-C) during check" in stderr, stderr
    log = (out / "gpu_check.log").read_text()
    assert "== check (interrupted by Ctrl-C)" in log and "check: a row measured" in log
    assert os.listdir(tmp_path / "tmp") == []
    assert not any(c.startswith("--tool") or c.startswith("-m pytest") for c in _calls(tmp_path))  # stopped there
