"""benchmarks.winograd_accuracy: the Toom-Cook matrices it builds are exact Winograd algorithms (checked in
float64 against F.conv2d), and its rows compare each variant with the direct conv."""
import csv
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarks import report
from benchmarks import winograd_accuracy as wa


@pytest.mark.parametrize("m, points", [(2, wa.POINTS_2)] + [(4, p) for p in wa.POINTS_4])
def test_each_point_set_gives_the_convolution_exactly_in_float64(m, points):
    torch.manual_seed(0)
    x = torch.randn(1, 5, 11, 9, dtype=torch.float64)  # sizes that are no multiple of the tile
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    got = wa.winograd_conv(x, w, m, wa.toom_cook(m, 3, points), dtype=torch.float64)
    torch.testing.assert_close(got, F.conv2d(x, w, padding=1), rtol=1e-12, atol=1e-12)


def test_the_two_by_two_algorithm_is_the_one_the_kernel_uses():
    """Scalings and signs move between A, G and B; each point's term A^T[:, t] x G[t] x B^T[t] does not: those of
    toom_cook(2, 3, (0, 1, -1)) are ops/winograd's."""
    from resnest_fast.ops import winograd as ops

    at, g, bt = wa.toom_cook(2, 3, wa.POINTS_2)
    ours_at = torch.tensor(((1, 1, 1, 0), (0, 1, -1, -1)), dtype=torch.float64)  # winograd_output_transform's
    ours_g, ours_bt = (torch.tensor(t, dtype=torch.float64) for t in (ops._G, ops._BT))
    terms = torch.einsum("kt,tj,ti->tkji", at, g, bt)
    torch.testing.assert_close(terms, torch.einsum("kt,tj,ti->tkji", ours_at, ours_g, ours_bt))


def test_points_that_repeat_are_refused():
    with pytest.raises(ValueError, match="needs 5 finite points"):
        wa.toom_cook(4, 3, (0, 1, -1))
    with pytest.raises((ValueError, ZeroDivisionError)):
        wa.toom_cook(4, 3, (0, 1, 1, 2, -2))


def test_rows_compare_every_variant_with_the_direct_conv():
    rows = wa.measure(shapes=(("tiny", 8, 6, 9, 10),))
    variants = [r["variant"] for r in rows]
    assert variants[0] == "direct (oneDNN)" and "F(2x2) ours" in variants and len(variants) == 3 + len(wa.POINTS_4)
    assert rows[0]["max_vs_direct"] == 1.0
    for r in rows:
        assert 0 < r["norm_rel_err"] < 1e-4 and r["max_rel_err"] > 0


def test_ctrl_c_writes_the_rows_made_so_far_and_exits_130(tmp_path):
    """A real SIGINT, as the terminal sends it, once the first rows are printed: one line, no traceback, exit 130,
    and the CSV holds exactly the rows printed before it (no temporary file beside it)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.winograd_accuracy", "--results-dir", str(tmp_path)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    for line in proc.stdout:
        if line.startswith("layer2.conv2"):
            printed.append(line.split()[1:3])
            if len(printed) == 2:
                break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted (Ctrl-C): partial results" in err
    with open(tmp_path / report.csv_name("winograd_accuracy"), newline="") as f:
        rows = list(csv.DictReader(f))
    made = len(printed) + sum(1 for line in out.splitlines() if line[:1].isalpha())
    assert 2 <= len(rows) == made < len(wa.SHAPES) * (3 + len(wa.POINTS_4))
    assert os.listdir(tmp_path) == [report.csv_name("winograd_accuracy")]
