"""benchmarks.winograd_accuracy: the Toom-Cook matrices it builds are exact Winograd algorithms (checked in
float64 against F.conv2d), and its rows compare each variant with the direct conv."""
import pytest
import torch
import torch.nn.functional as F

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
