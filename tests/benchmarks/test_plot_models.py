"""benchmarks/plot_models.py on hand-written CSVs: it draws a PNG, and says which files are missing."""
import csv

import pytest

from benchmarks import plot_models

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


def test_missing_csv_is_named(tmp_path):
    with pytest.raises(SystemExit, match="missing.csv"):
        plot_models.main([str(tmp_path / "missing.csv"), "-o", str(tmp_path / "x.png")])


def test_output_must_be_png(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot_models.main([str(tmp_path / "a.csv"), "-o", str(tmp_path / "x.jpg")])
    assert "--output" in capsys.readouterr().err
