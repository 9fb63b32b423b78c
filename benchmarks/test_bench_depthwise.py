"""The dilated depthwise 3x3 convs of DeepLabV3+'s separable ASPP, eval forward, fp32 on CPU: the paths an
inference model can take, side by side in one process, same weights, same input.

Providers (each computes relu(conv2d(x, w, b, padding=d, dilation=d, groups=C)) from a channels_last x, as the
optimized model's activations are, and hands back a channels_last output, as its next conv wants):
    aten-nchw          x to NCHW, F.conv2d (ATen's depthwise kernel), ReLU, back to channels_last: what
                       optimize_for_inference ran before the C++ kernel (and what mmseg's eager model runs, less
                       the two layout copies)
    aten-cl            F.conv2d on the channels_last x (whichever kernel ATen picks for it), ReLU
    onednn-packed      oneDNN's conv with the weight prepacked and the ReLU as a post-op (mkldnn
                       _convolution_pointwise): what optimize_for_inference runs for every other conv
    ours               resnest_fast.ops.depthwise_conv3x3 (the C++ kernel, bias and ReLU fused)
Every provider's output is checked against the conv in float64 on the same (rounded) inputs before it is timed, by
flash-attention's rule (|got - ref64| <= 2 |aten - ref64| + 1e-6 * max|ref64|).

Shapes: DeepLabV3+ S-101-D8's ASPP input (2048 channels, stride 8) at batch 1 for the 256x512 input (32x64) and
the Cityscapes 512x1024 crop (64x128), dilations 12, 24 and 36.

    pytest benchmarks/test_bench_depthwise.py --benchmark-only
Rows go to benchmarks/results/depthwise.csv (with machine, versions and git revision) at the end of the session.
"""
import pytest
import torch
import torch.nn.functional as F

from benchmarks import report
from resnest_fast.ops import depthwise as dw

CHANNELS = 2048
MAPS = {"256x512": (32, 64), "512x1024": (64, 128)}
DILATIONS = (12, 24, 36)
PROVIDERS = ("aten-nchw", "aten-cl", "onednn-packed", "ours")
ROUNDS = 20
FLOOR = 1e-6
_groups = {}


def _aten_nchw(x, w, b, d):
    out = torch.relu(F.conv2d(x.contiguous(), w, b, 1, d, d, x.shape[1]))
    return out.contiguous(memory_format=torch.channels_last)


def _aten_cl(x, w, b, d):
    return torch.relu(F.conv2d(x, w, b, 1, d, d, x.shape[1]))


_packed = {}


def _onednn_packed(x, w, b, d):
    key = (id(w), d, tuple(x.shape))
    if key not in _packed:  # packed once, as optimize_for_inference does; not timed
        _packed.clear()
        _packed[key] = torch.ops.mkldnn._reorder_convolution_weight(w, [d, d], [1, 1], [d, d], x.shape[1], x.shape)
    return torch.ops.mkldnn._convolution_pointwise(x, _packed[key], b, [d, d], [1, 1], [d, d], x.shape[1], "relu",
                                                   [], "")


def _ours(x, w, b, d):
    return dw.depthwise_conv3x3(x, w, b, d, relu=True)


FUNCTIONS = {"aten-nchw": _aten_nchw, "aten-cl": _aten_cl, "onednn-packed": _onednn_packed, "ours": _ours}


def _inputs(h, w):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, CHANNELS, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(CHANNELS, 1, 3, 3, generator=gen) / 3
    bias = torch.randn(CHANNELS, generator=gen) / 10
    return x, weight, bias


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("size", list(MAPS))
def test_depthwise(benchmark, size, dilation, provider):
    if provider == "ours" and not dw.HAS_DEPTHWISE_KERNEL:
        pytest.skip("resnest_fast._C was built without depthwise_conv3x3: only the reference would run")
    if provider == "onednn-packed" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    x, weight, bias = _inputs(*MAPS[size])
    fn = FUNCTIONS[provider]
    with torch.no_grad():
        got = fn(x, weight, bias, dilation)
        ref64 = _aten_nchw(x.double(), weight.double(), bias.double(), dilation)
        aten = _aten_nchw(x, weight, bias, dilation)
    err = (got.double() - ref64).abs().max().item()
    bound = 2 * (aten.double() - ref64).abs().max().item() + FLOOR * max(1.0, ref64.abs().max().item())
    assert got.is_contiguous(memory_format=torch.channels_last), f"{provider}: output not channels_last"
    assert err <= bound, f"{provider}: max error {err:.3g} against float64 > {bound:.3g}; not timed"

    benchmark.group = f"depthwise {size} d={dilation}"
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x, weight, bias, dilation), rounds=ROUNDS, warmup_rounds=3)
    stats = benchmark.stats.stats
    row = {"bench": "depthwise_conv3x3", "input": size, "x_shape": "x".join(map(str, x.shape)), "dilation": dilation,
           "dtype": "fp32", "provider": provider, "median_ms": round(stats.median * 1e3, 4),
           "min_ms": round(stats.min * 1e3, 4), "rounds": stats.rounds, "max_abs_err_vs_fp64": f"{err:.2e}",
           "speedup_vs_aten_nchw": ""}
    report.add("depthwise", row)
    group = _groups.setdefault((size, dilation), {})
    group[provider] = row
    if "aten-nchw" in group:
        for r in group.values():
            r["speedup_vs_aten_nchw"] = round(group["aten-nchw"]["median_ms"] / r["median_ms"], 2)
    if len(group) == len(PROVIDERS):
        report.note(f"depthwise {size} d={dilation}: " + ", ".join(
            f"{p} {group[p]['median_ms']:.2f} ms ({group[p]['speedup_vs_aten_nchw']}x)" for p in PROVIDERS))
