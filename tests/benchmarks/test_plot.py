"""benchmarks/plot.py on hand-written CSVs: it draws a PNG from the post-conv benchmark's rows, writes only a .png it
was asked to (never over a file unless --overwrite), and refuses what it cannot read in one line, exit 2."""
import csv
import os

import pytest

from benchmarks import plot
from tests.benchmarks.refusals import refused

PNG = b"\x89PNG\r\n\x1a\n"


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def splat(tmp_path):
    rows = [{"machine": "test machine", "git": "abc1234", "malloc": "glibc default", "bench": "splat_post_conv",
             "shape": "issue", "y_shape": "2x512x64x128", "provider": p, "mode": m, "median_ms": ms}
            for p, ms in (("eager", 9.0), ("ours-cpu", 3.0)) for m in ("forward", "full")]
    _write(tmp_path / "splat.csv", rows)
    return tmp_path / "splat.csv"


def test_plot_writes_a_png_and_replaces_one_only_when_asked(splat, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "splat.png"
    assert plot.main([str(splat), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    out.write_bytes(PNG + b"mine")
    refused(capsys, plot.main, [str(splat), "-o", str(out)], "--output", "already exists", "--overwrite")
    assert out.read_bytes() == PNG + b"mine"
    assert plot.main([str(splat), "-o", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:8] == PNG and out.read_bytes() != PNG + b"mine"
    assert sorted(os.listdir(tmp_path)) == ["splat.csv", "splat.png"]  # no temporary file left


def test_the_output_must_be_a_png_path_that_can_be_written(splat, tmp_path, capsys):
    """-o keep.csv overwrote the CSV with PNG data and exited 0; a folder or '' was a traceback after plotting."""
    keep = tmp_path / "keep.csv"
    keep.write_text("mine\n")
    refused(capsys, plot.main, [str(splat), "-o", str(keep)], "--output", ".png")
    refused(capsys, plot.main, [str(splat), "-o", str(keep), "--overwrite"], "--output", ".png")
    refused(capsys, plot.main, [str(splat), "-o", str(tmp_path)], "--output", "is a folder")
    refused(capsys, plot.main, [str(splat), "-o", ""], "--output", "empty string")
    refused(capsys, plot.main, [str(splat), "-o", str(keep / "x.png")], "--output", "is a file")
    assert keep.read_text() == "mine\n"
    assert sorted(os.listdir(tmp_path)) == ["keep.csv", "splat.csv"]


def test_each_csv_it_cannot_plot_is_named(splat, tmp_path, capsys):
    """A missing CSV exited 1, or was silently dropped beside one that exists; a folder was IsADirectoryError and
    a CSV without the benchmark's columns an IndexError or KeyError."""
    out = str(tmp_path / "x.png")
    missing = str(tmp_path / "missing.csv")
    refused(capsys, plot.main, [missing, "-o", out], missing, "does not exist")
    refused(capsys, plot.main, [str(splat), missing, "-o", out], missing, "does not exist")
    refused(capsys, plot.main, [str(tmp_path), "-o", out], str(tmp_path), "is a folder")
    _write(tmp_path / "other.csv", [{"a": 1, "b": 2}])
    refused(capsys, plot.main, [str(tmp_path / "other.csv"), "-o", out], "other.csv", "bench")
    _write(tmp_path / "short.csv", [{"bench": "splat_post_conv", "shape": "issue", "provider": "eager"}])
    refused(capsys, plot.main, [str(tmp_path / "short.csv"), "-o", out], "short.csv", "median_ms")
    _write(tmp_path / "ops.csv", [{"bench": "splat_op", "op": "pool", "speedup_vs_eager": "2.0"}])
    refused(capsys, plot.main, [str(tmp_path / "ops.csv"), "-o", out], "ops.csv", "mode")
    assert not os.path.exists(out)
