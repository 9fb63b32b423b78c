"""ONNX Runtime against our eager CPU path, on one split-attention block and on a whole segmentor.

    python -m benchmarks.onnx_runtime                    # defaults below; CSV to docs/results/onnx-runtime-<date>.csv
    python -m benchmarks.onnx_runtime --size 128 256 --iters 5 --csv /tmp/onnx.csv

Cases: "post-conv" (a block after its conv: what the fused ops replace), "block" (one SplitAttentionConv2d, conv
included), and a ResNeSt-D8 FCN segmentor at full widths (depth --depth). Providers, side by side in one process,
same weights and input:
  torch-fused      the model as shipped: eager PyTorch, split attention on the C++ CPU kernels (backend 'auto');
  torch-reference  eager PyTorch with backend='reference': the decomposition the ONNX file holds;
  torch-optimized  resnest_fast.optimize_for_inference(model): BN folded, conv post-ops, prepacked oneDNN weights;
  onnxruntime      the file written by resnest_fast.export.export_onnx, on ONNX Runtime's CPU provider with all
                   graph optimisations and as many intra-op threads as torch uses.
Each is warmed up, then timed over --iters calls, the providers taking turns within each iteration; the median is
reported (mean and min in the CSV). Outputs are
compared with torch-fused. This is a script, not a test: figures depend on the machine and its load.
"""
import argparse
import csv
import datetime
import os
import statistics
import sys
import tempfile
import time

import torch

from resnest_fast import optimize_for_inference
from resnest_fast.export import export_onnx, reference_ops
from resnest_fast.nn import SplitAttentionConv2d
from resnest_fast.segmentation import build_segmentor, load_config

from benchmarks import report

CONFIG = "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024"


def randomize_bn(model):
    """BN statistics away from the identity so the attention is not trivially uniform."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def segmentor(depth):
    cfg = load_config(CONFIG)["model"]
    cfg["backbone"].update(depth=depth)
    return randomize_bn(build_segmentor(cfg)).eval()


def block(channels, radix):
    return randomize_bn(SplitAttentionConv2d(channels, channels, 3, padding=1, radix=radix)).eval()


class PostConv(torch.nn.Module):
    """Only what the fused ops replace: a block's everything-after-the-conv, y (B, R*C, H, W) -> (B, C, H, W)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, y):
        return self.block.attend(y)


def timed(providers, warmup, iters):
    """Milliseconds per call of each provider. The providers take turns within every iteration (in a rotating
    order), so that load from other processes on a shared machine falls on all of them alike."""
    names = list(providers)
    for name in names:
        for _ in range(warmup):
            providers[name]()
    times = {name: [] for name in names}
    for i in range(iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            providers[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def bench(name, model, x, args, tmpdir, rows):
    import onnxruntime as ort

    path = os.path.join(tmpdir, f"{name}.onnx")
    t0 = time.perf_counter()
    export_onnx(model, x, path, validate=True)
    export_s = time.perf_counter() - t0
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}

    fast = optimize_for_inference(model)
    with torch.no_grad():
        want = model(x)

        def run_reference():
            with reference_ops(model):
                return model(x)

        providers = {
            "torch-fused": lambda: model(x),
            "torch-reference": run_reference,
            "torch-optimized": lambda: fast(x),
            "onnxruntime": lambda: torch.from_numpy(session.run(None, feed)[0]),
        }
        errors = {provider: (fn() - want).abs().max().item() for provider, fn in providers.items()}
        all_times = timed(providers, args.warmup, args.iters)
        medians = {}
        for provider, times in all_times.items():
            err = errors[provider]
            medians[provider] = statistics.median(times)
            rows.append(dict(case=name, shape="x".join(map(str, x.shape)), provider=provider,
                             median_ms=round(medians[provider], 2), mean_ms=round(statistics.mean(times), 2),
                             min_ms=round(min(times), 2), iters=args.iters, max_abs_diff_vs_fused=f"{err:.2e}",
                             onnx_export_s=round(export_s, 1) if provider == "onnxruntime" else ""))
    fused = medians["torch-fused"]
    print(f"{name} {tuple(x.shape)}: " + ", ".join(
        f"{p} {m:.1f} ms ({m / fused:.2f}x fused)" for p, m in medians.items()), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50, help="backbone depth of the FCN segmentor (full widths)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--block-shape", type=int, nargs=4, default=(2, 256, 64, 128), metavar=("B", "C", "H", "W"),
                        help="input of the single block (radix 2, C in and out channels)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--csv", default=None, help="default: docs/results/onnx-runtime-<date>.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        b, c, h, w = args.block_shape
        sa = block(c, 2)
        bench("post-conv", PostConv(sa), torch.randn(b, 2 * c, h, w), args, tmpdir, rows)
        bench("block", sa, torch.randn(b, c, h, w), args, tmpdir, rows)
        model = segmentor(args.depth)
        img = torch.rand(1, 3, *args.size) * 255
        bench(f"fcn-s{args.depth}-d8", model, img, args, tmpdir, rows)
    import onnxruntime

    ctx = report.context()
    ctx["onnxruntime"] = onnxruntime.__version__
    out = args.csv or os.path.join(os.path.dirname(report.HERE), "docs", "results",
                                   f"onnx-runtime-{datetime.date.today().isoformat()}.csv")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(ctx))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **ctx})
    os.replace(tmp, out)
    print(f"wrote {out} ({report.machine()})")


if __name__ == "__main__":
    sys.exit(main())
