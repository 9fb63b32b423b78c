"""Every split-attention conv of ResNeSt-101-D8 at an input size, and the shape sets the pytest benchmarks run.

The one derivation of those shapes, used by benchmarks/memory_model.py and both benchmark suites (no benchmark
runs here). mmseg's ResNeSt-101-D8 (configs/_base_/models/*_s101-d8.py): deep stem (three 3x3 convs, the first
with stride 2) then a 3x3 max pool with stride 2, four stages of (3, 4, 23, 3) bottlenecks, strides (1, 2, 1, 1),
dilations (1, 1, 2, 4) with contract_dilation (a stage's first block uses half its dilation), radix 2, groups 1,
and avg_down_stride: a strided block runs its split-attention conv at stride 1 and pools afterwards, so the first
block of stage 2 convolves at 1/4 resolution. The conv of a stage with `planes` p maps p -> 2p channels (radix 2).
tests/benchmarks/test_stage_shapes.py checks the derived shapes against forward hooks on mmseg's backbone and on
resnest_fast's.

Shape sets (`pytest benchmarks/... --benchmark-only --bench-shapes quick|stages|all`, benchmarks/conftest.py):
    quick   small shapes, so that a whole suite stays short on 2 cores (the default)
    stages  the distinct split-attention shapes of ResNeSt-101-D8 at the seed's training crops (CROPS)
    all     both
"""
import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Tuple

SHAPE_SETS = ("quick", "stages", "all")

# Per stage: the bottleneck width (the split-attention conv's channels C), the number of blocks, the stride of its
# first block, and the stage's dilation.
RESNEST101_D8_STAGES = ((64, 3, 1, 1), (128, 4, 2, 1), (256, 23, 1, 2), (512, 3, 1, 4))
RADIX, GROUPS, REDUCTION = 2, 1, 4


@dataclass(frozen=True)
class Block:
    """One split-attention conv: its name (layerS.I), its input x = (batch, C, H, W), its 3x3 conv (stride 1,
    padding = dilation) and the conv's output y = (batch, radix*C, H, W)."""

    name: str
    batch: int
    channels: int  # C
    height: int
    width: int
    dilation: int = 1
    radix: int = RADIX
    groups: int = GROUPS

    @property
    def x_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def y_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.radix * self.channels, self.height, self.width)

    @property
    def inter_channels(self) -> int:
        return max(self.channels * self.radix // REDUCTION, 32)  # mmseg's rule, in_channels == channels here

    @property
    def stage(self) -> str:
        return self.name.split(".")[0]

    @property
    def index(self) -> int:
        """The block's position in its stage."""
        return int(self.name.split(".")[1])


def resnest101_d8_blocks(batch: int, height: int, width: int) -> List[Block]:
    """Every split-attention conv of ResNeSt-101-D8 for a (batch, 3, height, width) input, in forward order.

    The deep stem halves the resolution with a stride-2 conv, then max-pool halves it again (each
    ceil(n / 2)); layer2's first block runs its split-attention conv at stride 1 and average-pools afterwards
    (avg_down_stride), so it sees the 1/4 resolution; everything after runs at 1/8 (dilation, not stride).
    """
    for name, v in (("batch", batch), ("height", height), ("width", width)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    h, w = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
    blocks = []
    for stage, (channels, count, stride, dilation) in enumerate(RESNEST101_D8_STAGES, start=1):
        for i in range(count):
            d = dilation // 2 if (i == 0 and dilation > 1) else dilation  # contract_dilation
            blocks.append(Block(f"layer{stage}.{i}", batch, channels, h, w, d))
            if i == 0 and stride == 2:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
    return blocks


def distinct_blocks(blocks: List[Block]) -> List[Tuple[str, Block, int]]:
    """(label, block, count) per distinct y shape (what the ops after the conv see: the dilation does not matter),
    labelled by the stage (or block) where it occurs."""
    seen = {}
    for b in blocks:
        key = (b.y_shape, b.radix, b.groups)
        if key in seen:
            seen[key][2] += 1
        else:
            seen[key] = [b.name, b, 1]
    out = []
    for name, b, count in seen.values():
        stage_blocks = [x for x in blocks if x.stage == b.stage]
        same = all((x.y_shape, x.radix, x.groups) == (b.y_shape, b.radix, b.groups) for x in stage_blocks)
        out.append((b.stage if same else name if count == 1 else f"{b.stage}.{name.split('.')[1]}+", b, count))
    return out


# ------------------------------------------------------------------------------------------------ shape sets


class Crop(NamedTuple):
    batch: int  # images per GPU
    height: int
    width: int
    short: str  # the op suite's prefix: "city-layer3" (the module suite's names use the key: "cityscapes-s3")


# The seed's training crops: mmseg's Cityscapes and ADE20k configs. Both suites keep the shape names they had, so
# that earlier CSVs (docs/results/) and README.md's `-k city-layer3` still name the same shapes.
CROPS = {"cityscapes": Crop(2, 512, 1024, "city"), "ade20k": Crop(4, 512, 512, "ade")}

# Small enough that the whole quick suite (compile included) takes a few minutes on 2 cores: x = 2x64x32x32,
# y = 2x128x32x32. The module benchmark adds a dilated case so the dilated conv is timed too.
_QUICK = Block("quick", 2, 64, 32, 32)
OP_QUICK = {"quick": _QUICK}
MODULE_QUICK = {"quick": _QUICK, "quick-dilated": Block("quick-dilated", 2, 128, 16, 16, dilation=2)}


def _select(which: str, quick: Dict[str, Block], stages: Dict[str, Block]) -> Dict[str, Block]:
    if which not in SHAPE_SETS:
        raise ValueError(f"shape set must be one of {', '.join(SHAPE_SETS)}, got {which!r}")
    return {**(quick if which != "stages" else {}), **(stages if which != "quick" else {})}


def op_shapes(which: str) -> Dict[str, Block]:
    """The op benchmark's shapes: for "stages", one block per distinct y shape (distinct_blocks), named
    "<crop short>-<label>" (e.g. "city-layer3")."""
    stages = {}
    for crop in CROPS.values():
        for label, block, _count in distinct_blocks(resnest101_d8_blocks(crop.batch, crop.height, crop.width)):
            stages[f"{crop.short}-{label}"] = block
    return _select(which, OP_QUICK, stages)


def module_shapes(which: str) -> Dict[str, Block]:
    """The module benchmark's shapes (the conv is included, so the dilation counts): for "stages", one block per
    distinct (x shape, dilation), named "<dataset>-s<stage>", or "-s<stage>-first" where a stage's first block
    differs from the rest."""
    stages = {}
    for dataset, crop in CROPS.items():
        seen = set()
        for block in resnest101_d8_blocks(crop.batch, crop.height, crop.width):
            if (block.x_shape, block.dilation) in seen:
                continue
            seen.add((block.x_shape, block.dilation))
            stage = int(block.stage[len("layer"):])
            stages[f"{dataset}-s{stage}" + ("-first" if block.index == 0 and stage > 1 else "")] = block
    return _select(which, MODULE_QUICK, stages)
