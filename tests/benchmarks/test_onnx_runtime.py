"""benchmarks.onnx_runtime's command line: its numbers and its CSV are checked before the first export, and Ctrl-C
writes the rows timed so far. (The runtime sessions themselves: test_runtime_providers.py.)"""
import csv
import os

import pytest

from benchmarks import onnx_runtime
from tests.benchmarks.refusals import refused


@pytest.fixture
def no_export(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "bench", lambda *a, **k: pytest.fail("the benchmark started"))


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--iters", "0"), ("--warmup", "-1"),
                                         ("--size", "0"), ("--block-shape", "-2"), ("--depth", "7")])
def test_a_number_out_of_range_is_refused_up_front(flag, value, capsys, tmp_path, no_export):
    """--iters 0 was a StatisticsError after the export; --threads 0 went to torch.set_num_threads."""
    values = {"--size": [value, "8"], "--block-shape": ["1", "8", value, "8"]}.get(flag, [value])
    refused(capsys, onnx_runtime.main, [flag, *values, "--csv", str(tmp_path / "x.csv")], flag)
    assert not os.listdir(tmp_path)


def test_a_csv_that_cannot_be_written_or_exists_is_refused_up_front(capsys, tmp_path, no_export):
    mine = tmp_path / "mine.csv"
    mine.write_text("mine\n")
    refused(capsys, onnx_runtime.main, ["--csv", str(tmp_path)], "--csv", "is a folder")
    refused(capsys, onnx_runtime.main, ["--csv", ""], "--csv", "empty string")
    refused(capsys, onnx_runtime.main, ["--csv", str(mine / "x.csv")], "--csv", "is a file")
    refused(capsys, onnx_runtime.main, ["--csv", str(mine)], "--csv", "already exists", "--overwrite")
    assert os.listdir(tmp_path) == ["mine.csv"] and mine.read_text() == "mine\n"


def test_ctrl_c_writes_the_rows_timed_so_far(capsys, tmp_path, monkeypatch):
    def bench(name, model, x, args, tmpdir, rows, runtimes):
        if rows:
            raise KeyboardInterrupt
        rows.append({"case": name, "provider": "torch-fused", "median_ms": 1.0})
        return {"torch-fused": 1.0}

    monkeypatch.setattr(onnx_runtime, "bench", bench)
    monkeypatch.setattr(onnx_runtime, "missing_runtime", lambda runtime: f"{runtime}: skipped")
    out = tmp_path / "onnx.csv"
    assert onnx_runtime.main(["--block-shape", "1", "8", "4", "4", "--csv", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "partial results, the 1 row" in err[0], err
    with open(out, newline="") as f:
        assert [(r["case"], r["provider"]) for r in csv.DictReader(f)] == [("post-conv", "torch-fused")]
    assert os.listdir(tmp_path) == ["onnx.csv"]
