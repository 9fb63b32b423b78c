"""ONNX Runtime and OpenVINO as providers of benchmarks/models.py, on the quarter-width ResNeSt-50 segmenter: they
run on the exported file, their logits are checked against mmseg's (a wrong file is refused, not timed), their
peak RSS is measured in their own processes, and a missing package is one line saying how to install it.

export_onnx (the dynamo exporter) takes ~19 s of CPU for this model, so the default suite writes the file with
torch's TorchScript exporter on the reference ops instead (3 s; export_onnx has its own tests in test_export.py);
the heavy test runs the benchmark's own export path end to end."""
import shutil
import sys
import warnings

import pytest
import torch

from benchmarks import models, onnx_runtime, report

for _package in ("onnx", "onnxscript", "onnxruntime", "openvino"):
    pytest.importorskip(_package, reason=f"needs {_package}: {onnx_runtime.INSTALL_HINT}")

TINY = "resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64"
RUNTIMES = ["onnxruntime", "openvino"]


def quick_export(module, x, path, **kwargs):
    """The same graph as export_onnx's (split attention as its reference ops), by the faster TorchScript exporter."""
    from resnest_fast.export import reference_ops

    with reference_ops(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=18)
    return path


def run_runtimes(tmp_path_factory, export):
    """One benchmark run of both runtimes with their memory processes: (CSV rows, the ONNX file it exported)."""
    saved = tmp_path_factory.mktemp("onnx") / "decode.onnx"

    def export_and_keep(*args, **kwargs):
        path = export(*args, **kwargs)
        shutil.copy(path, saved)
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "RESULTS", {})
        mp.setattr(report, "SUMMARY", [])
        mp.setattr(models, "export_onnx", export_and_keep)
        models.bench_model(TINY, size=(64, 64), rounds=1, warmup=0, providers=RUNTIMES, memory_calls=1)
        rows = report.RESULTS["models"]
    return rows, saved


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_runtimes(tmp_path_factory, quick_export)


def check_timed_rows(rows):
    timed = {r["provider"]: r for r in rows if r["bench"] == "eval_forward"}
    assert set(timed) == set(RUNTIMES)  # the reference is computed for the check but not timed: not asked for
    for r in timed.values():
        assert float(r["max_abs_diff_vs_reference"]) <= models.CHECK_TOL
        assert r["median_s"] > 0 and r["onnx_export_s"] != "" and r["speedup_vs_reference"] == ""


def test_runtimes_are_timed_on_outputs_that_match_mmseg(tiny_run):
    check_timed_rows(tiny_run[0])


@pytest.mark.heavy
def test_runtimes_on_the_file_export_onnx_writes(tmp_path_factory):
    rows, _ = run_runtimes(tmp_path_factory, models.export_onnx)
    check_timed_rows(rows)
    assert {r["provider"] for r in rows if r["bench"] == "eval_peak_memory"} == set(RUNTIMES)


def test_runtimes_peak_rss_comes_from_their_own_processes(tiny_run):
    rows, _ = tiny_run
    memory = {r["provider"]: r for r in rows if r["bench"] == "eval_peak_memory"}
    assert set(memory) == set(RUNTIMES)
    for r in memory.values():
        assert "peak RSS" in r["measure"]
        # a process of its own: torch and the runtime are imported there, so the RSS is far above a file's size
        assert r["peak_mib"] >= r["after_build_mib"] > 100
        assert r["growth_mib"] == pytest.approx(r["peak_mib"] - r["after_build_mib"], abs=0.2)


def test_a_runtime_with_wrong_logits_is_reported_failing(tiny_run, monkeypatch, runtime="openvino"):
    """The exported file with its classifier's weights doubled: the provider fails the check instead of timing."""
    import onnx
    from onnx import numpy_helper

    _, saved = tiny_run
    graph = onnx.load(str(saved))
    changed = 0
    for init in graph.graph.initializer:
        if "conv_seg" in init.name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
            changed += 1
    assert changed, [i.name for i in graph.graph.initializer][-5:]

    def corrupt_export(model, x, path, **kwargs):
        onnx.save(graph, path)
        return path

    monkeypatch.setattr(models, "export_onnx", corrupt_export)
    monkeypatch.setattr(report, "RESULTS", {})
    monkeypatch.setattr(report, "SUMMARY", [])
    with pytest.raises(AssertionError, match=f"{runtime}: logits differ from"):
        models.bench_model(TINY, size=(64, 64), rounds=1, warmup=0, providers=[runtime], peak_memory=False)
    assert "models" not in report.RESULTS  # nothing timed


def test_missing_package_is_one_line_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails, as where it is not installed
    monkeypatch.setattr(report, "RESULTS", {})
    monkeypatch.setattr(report, "SUMMARY", [])
    medians = models.bench_model(TINY, size=(64, 64), rounds=1, warmup=0, providers=["ours", "openvino"],
                                 peak_memory=False)
    assert set(medians) == {"ours"}
    lines = [line for line in capsys.readouterr().err.splitlines() if "openvino" in line]
    assert lines == [("openvino: skipped, package openvino not installed (pip install openvino, "
                      "or pip install 'resnest_fast[deploy]')")]


def test_providers_option_picks_and_names_bad_ones(capsys):
    assert models.parse_args([]).providers == ["mmseg", "ours", "ours-optimized"]
    assert models.parse_args(["--compile"]).providers[-3:] == list(models.COMPILED)
    assert models.parse_args(["--providers", "ours", "openvino"]).providers == ["ours", "openvino"]
    with pytest.raises(SystemExit) as exc:
        models.parse_args(["--providers", "tensorrt"])
    assert exc.value.code == 2 and "--providers" in capsys.readouterr().err


def test_runtime_session_runs_a_file_like_torch(tmp_path):
    """Both sessions on a one-conv file agree with torch's conv (the helper onnx_runtime.py and models.py share)."""
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "conv.onnx"
    quick_export(conv, x, path)
    with torch.no_grad():
        want = conv(x)
    for runtime in RUNTIMES:
        got = onnx_runtime.runtime_session(runtime, path, 1)(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        onnx_runtime.runtime_session("tvm", path, 1)
