"""benchmarks/plot_models.py on hand-written CSVs: it draws a PNG, and says which files are missing."""
import csv

import pytest

from benchmarks import plot_models
from tests.benchmarks.refusals import refused

CTX = {"date": "2026-11-29T00:00:00+00:00", "git": "abc1234", "torch": "2.13.0+cpu", "python": "3.11",
       "machine": "test machine", "malloc": "glibc default"}
MODEL = "resnest_s101-d8_deeplabv3_4xb4-160k_ade20k-512x512"


def _write(path, rows):
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = []
    for provider, fps, speedup in (("mmseg", 0.5, 1.0), ("ours", 0.6, 1.2), ("ours-optimized", 0.8, 1.6)):
        rows.append({**CTX, "bench": "eval_forward", "model": MODEL, "input": "1x3x128x256", "provider": provider,
                     "fps": fps, "speedup_vs_reference": speedup})
        rows.append({**CTX, "bench": "eval_peak_memory", "model": MODEL, "input": "1x3x128x256",
                     "provider": provider, "peak_mib": 900, "growth_mib": 100 / speedup, "measure": "peak RSS"})
    _write(tmp_path / "models.csv", rows)
    module = [{**CTX, "bench": "split_attention_block", "shape": "quick", "x_shape": "2x64x32x32", "dilation": 1,
               "mode": mode, "provider": p, "median_ms": ms}
              for mode in ("forward", "full") for p, ms in (("mmseg", 2.0), ("mmseg-compiled", 1.5), ("ours-cpu", 1.0))]
    _write(tmp_path / "module.csv", module)
    out = tmp_path / "plot.png"
    plot_models.main([str(tmp_path / "models.csv"), str(tmp_path / "module.csv"), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_each_csv_it_cannot_plot_is_named_and_exits_2(tmp_path, capsys):
    """A missing CSV exited 1, and was dropped silently beside one that exists; a folder was IsADirectoryError and
    rows without their columns a KeyError."""
    out = str(tmp_path / "x.png")
    missing = str(tmp_path / "missing.csv")
    _write(tmp_path / "models.csv", [{**CTX, "bench": "eval_forward", "model": MODEL, "input": "1x3x8x8",
                                      "provider": "ours", "fps": 1.0, "speedup_vs_reference": ""}])
    refused(capsys, plot_models.main, [missing, "-o", out], missing, "does not exist")
    refused(capsys, plot_models.main, [str(tmp_path / "models.csv"), missing, "-o", out], missing)
    refused(capsys, plot_models.main, [str(tmp_path), "-o", out], str(tmp_path), "is a folder")
    _write(tmp_path / "other.csv", [{"a": 1}])
    refused(capsys, plot_models.main, [str(tmp_path / "other.csv"), "-o", out], "other.csv", "bench")
    _write(tmp_path / "short.csv", [{**CTX, "bench": "eval_forward", "model": MODEL, "provider": "ours"}])
    refused(capsys, plot_models.main, [str(tmp_path / "short.csv"), "-o", out], "short.csv", "input", "fps")
    assert not (tmp_path / "x.png").exists()


def test_a_models_csv_without_the_reference_is_plotted(tmp_path):
    """models.py run without the reference provider leaves speedup_vs_reference empty (there is nothing to divide
    by): the fps are plotted, without a speedup ("could not convert string to float: ''" before)."""
    pytest.importorskip("matplotlib")
    rows = [{**CTX, "bench": "eval_forward", "model": MODEL, "input": "1x3x64x64", "provider": p, "fps": fps,
             "speedup_vs_reference": ""} for p, fps in (("ours", 0.6), ("ours-optimized", 0.8))]
    _write(tmp_path / "models.csv", rows)
    out = tmp_path / "models.png"
    assert plot_models.main([str(tmp_path / "models.csv"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_existing_file_is_replaced_only_when_asked(tmp_path, capsys):
    rows = [{**CTX, "bench": "eval_forward", "model": MODEL, "input": "1x3x8x8", "provider": "ours", "fps": 1.0,
             "speedup_vs_reference": ""}]
    _write(tmp_path / "models.csv", rows)
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"mine")
    refused(capsys, plot_models.main, [str(tmp_path / "models.csv"), "-o", str(mine)], "already exists",
            "--overwrite")
    refused(capsys, plot_models.main, [str(tmp_path / "models.csv"), "-o", str(tmp_path / "models.csv")],
            "--output", ".png")
    assert mine.read_bytes() == b"mine" and (tmp_path / "models.csv").read_text().startswith("date,")


def test_output_must_be_png(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot_models.main([str(tmp_path / "a.csv"), "-o", str(tmp_path / "x.jpg")])
    assert "--output" in capsys.readouterr().err
