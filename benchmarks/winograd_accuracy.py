"""How much accuracy each Winograd variant costs at the convs optimize_for_inference runs as Winograd: fp32 error
against a float64 convolution, for oneDNN's direct fp32 conv, our F(2x2, 3x3) kernel and F(4x4, 3x3) (36 products
per 4x4 output tile instead of 144: 4x fewer multiply-adds than the direct conv, 1.78x fewer than F(2x2, 3x3))
with several choices of interpolation points.

The project keeps a Winograd variant only where its error stays within 2x the direct conv's. F(4x4, 3x3) is not
implemented as a kernel: it is emulated here with the same arithmetic a kernel would do in fp32 (input and output
transforms in fp32, the 36 GEMMs in fp32 through MKL), with the transform matrices built from the points by
Toom-Cook (A and G from the points, B solved so that the bilinear form is the correlation exactly, in float64).

Shapes: the Winograd convs of ResNeSt-101-D8 DeepLabV3 at a 256x512 input (output stride 8): the split-attention
convs of layer2 (per group 64 -> 128 channels at 64x128), layer3 (128 -> 256, 32x64, 23 blocks), layer4
(256 -> 512, 32x64) and the ASPP bottleneck (2560 -> 512, 32x64); one group each (the error is per group).
Dilation splits a conv into undilated convs on the phases, so it changes the sizes, not the arithmetic: the
convs are run undilated. Inputs are ReLU'd standard normals (what a conv after BN + ReLU sees), weights Kaiming
normal. Error = max |y - y64| / max |y64| and ||y - y64|| / ||y64||.

    python -m benchmarks.winograd_accuracy
Rows go to benchmarks/results/winograd_accuracy.csv (--results-dir to change; an existing file is refused unless
--overwrite); Ctrl-C writes the rows made so far and exits 130.
"""
import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks import report

# (label, in channels, out channels, H, W)
SHAPES = (("layer2.conv2", 64, 128, 64, 128), ("layer3.conv2", 128, 256, 32, 64),
          ("layer4.conv2", 256, 512, 32, 64), ("head.bottleneck", 2560, 512, 32, 64))
# F(4x4, 3x3) interpolation points (the fifth is infinity); Lavin & Gray's are (0, 1, -1, 2, -2)
POINTS_4 = ((0, 1, -1, 2, -2), (0, 1, -1, 0.5, -0.5), (0, 1, -1, 0.5, -2), (0, 1, -1, 2, -0.5))
POINTS_2 = (0, 1, -1)


def toom_cook(m, r, points):
    """(A^T (m x n), G (n x r), B^T (n x n)) of F(m, r) for the finite `points` and infinity, float64:
    y = A^T [(G g) * (B^T d)] is the correlation of d (n values) with g (r values)."""
    n = m + r - 1
    if len(points) != n - 1:
        raise ValueError(f"F({m}, {r}) needs {n - 1} finite points, got {points}")
    at = torch.zeros(m, n, dtype=torch.float64)
    g = torch.zeros(n, r, dtype=torch.float64)
    for i, p in enumerate(points):
        norm = 1.0
        for q in points:
            if q != p:
                norm *= p - q
        at[:, i] = torch.tensor([float(p) ** j for j in range(m)], dtype=torch.float64)
        g[i] = torch.tensor([float(p) ** k / norm for k in range(r)], dtype=torch.float64)
    at[m - 1, n - 1] = 1.0
    g[n - 1, r - 1] = 1.0
    # B^T solves sum_t A^T[k, t] G[t, j] B^T[t, i] = [i == k + j] for every output k, tap j, input i
    system = torch.einsum("kt,tj,ts,iu->kjisu", at, g, torch.eye(n, dtype=torch.float64),
                          torch.eye(n, dtype=torch.float64)).reshape(m * r * n, n * n)
    target = torch.zeros(m, r, n, dtype=torch.float64)
    for k in range(m):
        for j in range(r):
            target[k, j, k + j] = 1.0
    bt = torch.linalg.lstsq(system, target.reshape(-1, 1)).solution.reshape(n, n)
    residual = (system @ bt.reshape(-1, 1) - target.reshape(-1, 1)).abs().max().item()
    if residual > 1e-9:
        raise ValueError(f"points {points} give no exact F({m}, {r}) (residual {residual:.2e})")
    return at, g, bt


def winograd_conv(x, w, m, matrices, dtype=torch.float32):
    """conv2d(x, w, padding=1) (3x3, stride 1) as F(m x m, 3x3) in `dtype` arithmetic: x (1, C, H, W), w (K, C, 3, 3)."""
    at, g, bt = (t.to(dtype) for t in matrices)
    n = bt.shape[0]
    _, c, h, wd = x.shape
    k = w.shape[0]
    th, tw = -(-h // m), -(-wd // m)
    tiles = F.pad(x.to(dtype), (1, 1 + tw * m - wd, 1, 1 + th * m - h)).unfold(2, n, m).unfold(3, n, m)[0]
    v = torch.einsum("ai,cstij,bj->abstc", bt, tiles, bt).reshape(n * n, th * tw, c)  # (n*n, tiles, C)
    u = torch.einsum("ai,kcij,bj->abck", g, w.to(dtype), g).reshape(n * n, c, k)
    mm = torch.bmm(v, u).view(n, n, th, tw, k)  # the n*n GEMMs, fp32 through MKL
    y = torch.einsum("ia,abstk,jb->ksitj", at, mm, at).reshape(k, th * m, tw * m)
    return y[None, :, :h, :wd]


def errors(y, want):
    y, want = y.double(), want.double()
    return ((y - want).abs().max() / want.abs().max()).item(), ((y - want).norm() / want.norm()).item()


def measure(shapes=SHAPES, seed=0, on_row=None):
    """Rows: shape, variant, max and norm relative error, and each as a multiple of the direct conv's; each row is
    also passed to on_row as it is made."""
    from resnest_fast.ops import winograd as winograd_ops

    rows = []
    gen = torch.Generator().manual_seed(seed)
    f2 = toom_cook(2, 3, POINTS_2)
    for label, c, k, h, w in shapes:
        x = torch.randn(1, c, h, w, generator=gen, dtype=torch.float64).relu_()
        weight = torch.randn(k, c, 3, 3, generator=gen, dtype=torch.float64) * (2.0 / (9 * c)) ** 0.5
        want = F.conv2d(x, weight, padding=1)
        variants = {"direct (oneDNN)": F.conv2d(x.float(), weight.float(), padding=1),
                    "F(2x2) ours": winograd_ops.conv3x3_winograd(
                        x.float(), winograd_ops.winograd_weight_transform(weight.float(), 1)),
                    "F(2x2) emulated": winograd_conv(x, weight, 2, f2)}
        for points in POINTS_4:
            variants[f"F(4x4) {points}"] = winograd_conv(x, weight, 4, toom_cook(4, 3, points))
        direct = errors(variants["direct (oneDNN)"], want)
        for name, y in variants.items():
            err = errors(y, want)
            rows.append({"conv": label, "channels": f"{c}->{k}", "map": f"{h}x{w}", "variant": name,
                         "max_rel_err": err[0], "norm_rel_err": err[1],
                         "max_vs_direct": round(err[0] / direct[0], 2), "norm_vs_direct": round(err[1] / direct[1], 2)})
            if on_row is not None:
                on_row(rows[-1])
    return rows


PROG = "python -m benchmarks.winograd_accuracy"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", default=None,
                        help="where winograd_accuracy.csv goes (default benchmarks/results)")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    results_dir = report.check_output_folder(parser, args.results_dir, "--results-dir",
                                             [report.csv_name("winograd_accuracy")], args.overwrite)
    print(f"{'conv':16s} {'variant':28s} {'max rel err':>12s} {'x direct':>9s} {'norm rel err':>13s} {'x direct':>9s}")

    def on_row(row):
        report.add("winograd_accuracy", dict(bench="winograd_accuracy", **row))
        print(f"{row['conv']:16s} {row['variant']:28s} {row['max_rel_err']:12.2e} {row['max_vs_direct']:9.2f} "
              f"{row['norm_rel_err']:13.2e} {row['norm_vs_direct']:9.2f}", flush=True)

    try:
        measure(on_row=on_row)
    except KeyboardInterrupt:
        return report.interrupted(PROG, results_dir)
    report.flush(results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
