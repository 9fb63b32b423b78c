"""ONNX Runtime and OpenVINO against our eager CPU path, on one split-attention block and on a whole segmentor;
and the home of the runtime sessions that benchmarks/models.py times as providers too.

    python -m benchmarks.onnx_runtime                    # defaults below; CSV to docs/results/onnx-runtime-<date>.csv
    python -m benchmarks.onnx_runtime --size 128 256 --iters 5 --csv /tmp/onnx.csv
    python -m benchmarks.onnx_runtime --post-conv-stages # only "post-conv", at each distinct shape of ResNeSt-101-D8

Cases: "post-conv" (a block after its conv: what the fused ops replace), "block" (one SplitAttentionConv2d, conv
included), and a ResNeSt-D8 FCN segmentor at full widths (depth --depth). Providers, side by side in one process,
same weights and input:
  torch-fused      the model as shipped: eager PyTorch, split attention on the C++ CPU kernels (backend 'auto');
  torch-reference  eager PyTorch with backend='reference': the decomposition the ONNX file holds;
  torch-optimized  resnest_fast.optimize_for_inference(model): BN folded, conv post-ops, prepacked oneDNN weights;
  onnxruntime      the file written by resnest_fast.export.export_onnx, on ONNX Runtime's CPU provider with all
                   graph optimisations and as many intra-op threads as torch uses;
  openvino         the same file on OpenVINO's CPU plugin: latency hint, f32 inference precision, as many
                   inference threads as torch uses.
A runtime whose package is missing is skipped with one line saying how to install it.
--post-conv-stages runs the post-conv case at the distinct split-attention shapes of ResNeSt-101-D8 at --size
(batch 1, benchmarks/stage_shapes.py) and sums them weighted by how often each occurs in the model.
Each is warmed up, then timed over --iters calls, the providers taking turns within each iteration; the median is
reported (mean and min in the CSV). Outputs are
compared with torch-fused. This is a script, not a test: figures depend on the machine and its load.
An existing --csv is refused before anything runs unless --overwrite; Ctrl-C writes the rows measured so far and
exits 130.
"""
import argparse
import datetime
import importlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import torch

from benchmarks import report
from benchmarks.stage_shapes import distinct_blocks, resnest101_d8_blocks
from resnest_fast import optimize_for_inference
from resnest_fast.export import export_onnx, reference_ops
from resnest_fast.nn import SplitAttentionConv2d
from resnest_fast.segmentation import build_segmentor, load_config

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


# Runtime -> (packages it needs, beyond onnx/onnxscript for the export, and how to install them).
RUNTIMES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}
EXPORT_PACKAGES = ("onnx", "onnxscript")
INSTALL_HINT = "pip install 'resnest_fast[deploy]'"


def missing_runtime(runtime):
    """None when `runtime` (a key of RUNTIMES) and the ONNX exporter are importable, else the one line to print:
    which package is missing and how to install it."""
    missing = [p for p in EXPORT_PACKAGES + RUNTIMES[runtime] if importlib.util.find_spec(p) is None]
    if not missing:
        return None
    return (f"{runtime}: skipped, package {', '.join(missing)} not installed "
            f"(pip install {' '.join(missing)}, or {INSTALL_HINT})")


def runtime_session(runtime, path, threads):
    """A callable x (CPU tensor) -> first output (tensor) running the ONNX file `path` on `runtime`'s CPU backend
    with `threads` intra-op threads, every graph optimisation on, f32 arithmetic."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_PRECISION_HINT": "f32",
                                                              "INFERENCE_NUM_THREADS": str(threads)})
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x.numpy()})
            # the request reuses its output buffer on the next call
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        return run
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")


def runtime_version(runtime):
    module = importlib.import_module(runtime)
    return getattr(module, "__version__", None) or module.get_version()


def bench(name, model, x, args, tmpdir, rows, runtimes):
    path = os.path.join(tmpdir, f"{name}.onnx")
    t0 = time.perf_counter()
    export_onnx(model, x, path, validate="onnxruntime" in runtimes)
    export_s = time.perf_counter() - t0
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
        }
        for runtime in runtimes:
            session = runtime_session(runtime, path, torch.get_num_threads())
            providers[runtime] = lambda session=session: session(x)
        errors = {provider: (fn() - want).abs().max().item() for provider, fn in providers.items()}
        all_times = timed(providers, args.warmup, args.iters)
        medians = {}
        for provider, times in all_times.items():
            err = errors[provider]
            medians[provider] = statistics.median(times)
            rows.append({"case": name, "shape": "x".join(map(str, x.shape)), "provider": provider,
                         "median_ms": round(medians[provider], 3), "mean_ms": round(statistics.mean(times), 3),
                         "min_ms": round(min(times), 3), "iters": args.iters, "max_abs_diff_vs_fused": f"{err:.2e}",
                         "onnx_export_s": round(export_s, 1) if provider in runtimes else ""})
    fused = medians["torch-fused"]
    print(f"{name} {tuple(x.shape)}: " + ", ".join(
        f"{p} {m:.2f} ms ({m / fused:.2f}x fused, max |diff| {errors[p]:.1e})" for p, m in medians.items()),
        flush=True)
    return medians


def post_conv_stages(args, tmpdir, rows, runtimes):
    """The post-conv case at each distinct split-attention shape of ResNeSt-101-D8 for a 1x3xHxW input; prints and
    returns {provider: ms per model forward}, each shape's median weighted by how many blocks have it."""
    totals = {}
    for label, b, count in distinct_blocks(resnest101_d8_blocks(1, *args.size)):
        sa = block(b.channels, b.radix)
        medians = bench(f"post-conv-{label}", PostConv(sa), torch.randn(*b.y_shape), args, tmpdir, rows, runtimes)
        rows[-len(medians):] = [{**row, "blocks": count} for row in rows[-len(medians):]]
        for provider, ms in medians.items():
            totals[provider] = totals.get(provider, 0.0) + count * ms
    print("post-conv of all 33 blocks per forward: " + ", ".join(f"{p} {t:.1f} ms" for p, t in totals.items()))
    return totals


PROG = "python -m benchmarks.onnx_runtime"


def default_csv(post_conv_stages):
    stem = "onnx-runtime-post-conv-stages" if post_conv_stages else "onnx-runtime"
    return os.path.join(os.path.dirname(report.HERE), "docs", "results",
                        f"{stem}-{datetime.date.today().isoformat()}.csv")


def write_rows(rows, runtimes, path):
    """The rows with report.context() and the runtimes' versions, written whole or not at all; returns `path`."""
    ctx = report.context()
    for runtime in runtimes:
        ctx[runtime] = runtime_version(runtime)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    return report.write_csv(path, fields + list(ctx), ({**row, **ctx} for row in rows))


def main(argv=None):
    from resnest_fast.models.resnest import ResNeSt

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, choices=sorted(ResNeSt.arch_settings), default=50,
                        help="backbone depth of the FCN segmentor (full widths)")
    parser.add_argument("--size", type=report.positive_int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--block-shape", type=report.positive_int, nargs=4, default=(2, 256, 64, 128),
                        metavar=("B", "C", "H", "W"), help="input of the single block (radix 2, C in and out channels)")
    parser.add_argument("--iters", type=report.positive_int, default=10)
    parser.add_argument("--warmup", type=report.non_negative_int, default=3)
    parser.add_argument("--threads", type=report.positive_int, default=torch.get_num_threads())
    parser.add_argument("--post-conv-stages", action="store_true",
                        help="only the post-conv case, at the distinct shapes of ResNeSt-101-D8 for a 1x3x--size input")
    parser.add_argument("--csv", default=None, help="default: docs/results/onnx-runtime[-post-conv-stages]-<date>.csv")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    out = report.check_output_file(parser, default_csv(args.post_conv_stages) if args.csv is None else args.csv,
                                   "--csv", args.overwrite)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runtimes = []
    for runtime in RUNTIMES:
        line = missing_runtime(runtime)
        if line:
            print(line, flush=True)
        else:
            runtimes.append(runtime)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            if args.post_conv_stages:
                post_conv_stages(args, tmpdir, rows, runtimes)
            else:
                b, c, h, w = args.block_shape
                sa = block(c, 2)
                bench("post-conv", PostConv(sa), torch.randn(b, 2 * c, h, w), args, tmpdir, rows, runtimes)
                bench("block", sa, torch.randn(b, c, h, w), args, tmpdir, rows, runtimes)
                model = segmentor(args.depth)
                img = torch.rand(1, 3, *args.size) * 255
                bench(f"fcn-s{args.depth}-d8", model, img, args, tmpdir, rows, runtimes)
    except KeyboardInterrupt:
        return report.stopped(PROG, len(rows), lambda: [write_rows(rows, runtimes, out)])
    write_rows(rows, runtimes, out)
    print(f"wrote {out} ({report.machine()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
