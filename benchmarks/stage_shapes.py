"""The inputs the split-attention convs of ResNeSt-101-D8 see in mmseg's configs, and the benchmark shape sets.

mmseg's ResNeSt-101-D8 (configs/_base_/models/*_s101-d8.py): deep stem (three 3x3 convs, the first with stride
2) then a 3x3 max pool with stride 2, four stages of (3, 4, 23, 3) bottlenecks, strides (1, 2, 1, 1), dilations
(1, 1, 2, 4) with contract_dilation (a stage's first block uses half its dilation), radix 2, groups 1, and
avg_down_stride: a strided block runs its split-attention conv at stride 1 and pools afterwards, so the first
block of stage 2 convolves at 1/4 resolution. The conv of a stage with `planes` p maps p -> 2p channels (groups 2).
The shapes here are computed from those rules; tests/benchmarks/test_stage_shapes.py checks them against forward
hooks on mmseg's own backbone.

RESNEST_FAST_BENCH_SHAPES=quick|stages|all picks the set the pytest benchmarks run (default quick).
"""
import os
from typing import Dict, NamedTuple

ENV = "RESNEST_FAST_BENCH_SHAPES"
SHAPE_SETS = ("quick", "stages", "all")

STAGE_BLOCKS = (3, 4, 23, 3)
STRIDES = (1, 2, 1, 1)
DILATIONS = (1, 1, 2, 4)
PLANES = (64, 128, 256, 512)

# The seed's training crops: mmseg's Cityscapes and ADE20k configs (crop, images per GPU).
CROPS = {"cityscapes": ((512, 1024), 2), "ade20k": ((512, 512), 4)}


class BlockShape(NamedTuple):
    """Input of one SplitAttentionConv2d: x is (batch, channels, height, width); its conv is 3x3, padding =
    dilation, stride 1, radix 2, groups 1."""

    batch: int
    channels: int
    height: int
    width: int
    dilation: int

    @property
    def label(self):
        return f"{self.batch}x{self.channels}x{self.height}x{self.width}-d{self.dilation}"


def _conv_out(size, stride):  # 3x3, padding 1: the stem convs, the max pool and the avg-down pool all follow it
    return (size - 1) // stride + 1


def resnest101_d8_block_shapes(batch, height, width):
    """[(stage, block index, BlockShape)] for every split-attention conv of ResNeSt-101-D8, input (batch, 3,
    height, width)."""
    h, w = _conv_out(height, 2), _conv_out(width, 2)  # stem: the first conv has stride 2
    h, w = _conv_out(h, 2), _conv_out(w, 2)  # max pool
    out = []
    for stage, (blocks, stride, dilation, planes) in enumerate(zip(STAGE_BLOCKS, STRIDES, DILATIONS, PLANES)):
        for i in range(blocks):
            d = dilation // 2 if (i == 0 and dilation > 1) else dilation
            out.append((stage, i, BlockShape(batch, planes, h, w, d)))
            if i == 0 and stride > 1:
                h, w = _conv_out(h, stride), _conv_out(w, stride)
    return out


def stage_shapes() -> Dict[str, BlockShape]:
    """The distinct split-attention inputs of ResNeSt-101-D8 at the seed's crops, named
    "<dataset>-s<stage>" (or "-s<stage>-first" where a stage's first block differs from the rest)."""
    shapes = {}
    for dataset, ((h, w), batch) in CROPS.items():
        seen = {}
        for stage, i, shape in resnest101_d8_block_shapes(batch, h, w):
            if shape in seen.values():
                continue
            name = f"{dataset}-s{stage + 1}" + ("-first" if i == 0 and stage > 0 else "")
            seen[name] = shape
        shapes.update(seen)
    return shapes


# Small enough that the whole quick module benchmark (compile included) takes a few minutes on 2 cores, with a
# dilated case so the dilated conv is timed too.
QUICK = {"quick": BlockShape(2, 64, 32, 32, 1), "quick-dilated": BlockShape(2, 128, 16, 16, 2)}


def selected_shape_set():
    value = os.environ.get(ENV, "quick").strip() or "quick"
    if value not in SHAPE_SETS:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(SHAPE_SETS)}")
    return value


def module_shapes() -> Dict[str, BlockShape]:
    """The shapes selected by RESNEST_FAST_BENCH_SHAPES."""
    which = selected_shape_set()
    out = {}
    if which in ("quick", "all"):
        out.update(QUICK)
    if which in ("stages", "all"):
        out.update(stage_shapes())
    return out
