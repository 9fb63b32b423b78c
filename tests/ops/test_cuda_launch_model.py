"""The CUDA kernels' launch geometry (csrc/ops/launch_geometry.h), checked on the CPU.

tests/ops/cuda_harness/launch_model.cpp is compiled with the system C++ compiler (no torch, no CUDA) against the
header the CUDA launchers and kernels use, then:
  * the launch model (plan_launch + model_launch, the very functions the launchers call) at every split-attention
    shape of ResNeSt-101-D8 for the training crops (Cityscapes 512x1024 at batch 2 and 4, ADE20k 512x512 at batch 4)
    and batch-1 inference (512x1024, 1024x2048, 512x512) must give every kernel, in both layouts and every dtype,
    >= 4 blocks per SM and >= 16 KB of loads in flight per SM, on an H100 (132 SMs) and an A100 (108 SMs);
  * the model itself is checked against hand-computed numbers, including the previous geometry (one block per
    (sample, channel): 128 blocks at layer1 for batch 2), which must fail those goals;
  * whole grids of real launches (small, multi-chunk, odd sizes with tails) are enumerated with the kernels' own
    (block, thread, step) -> element mapping: every element is touched exactly once, and every partial sum has a
    slot of its own.
"""
import functools
import pathlib
import shutil
import subprocess

import pytest

from benchmarks.stage_shapes import resnest101_d8_blocks

ROOT = pathlib.Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "ops" / "cuda_harness" / "launch_model.cpp"
KERNELS = ("pool", "pool_backward", "combine", "combine_backward", "bn_stats", "backward_reduce", "backward_input")
DTYPES = ("fp32", "bf16", "fp16", "fp64")
GPUS = {"H100": 132, "A100": 108}
# (batch, height, width): the training crops per GPU and batch-1 inference.
CROPS = [(1, 512, 1024), (1, 1024, 2048), (2, 512, 1024), (4, 512, 1024), (1, 512, 512), (4, 512, 512)]
MIN_BLOCKS_PER_SM = 4
MIN_BYTES_IN_FLIGHT_PER_SM = 16 * 1024


@functools.lru_cache(maxsize=None)
def harness(tmp_dir: str) -> str:
    exe = pathlib.Path(tmp_dir) / "launch_model"
    cmd = [shutil.which("g++") or shutil.which("c++"), "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror",
           f"-I{ROOT / 'csrc'}", str(HARNESS), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return str(exe)


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler (g++/c++) to build the launch-model harness")
    return harness(str(tmp_path_factory.mktemp("launch_model")))


def stage_shapes():
    """{name: (B, R, C, H, W)} for every distinct split-attention y shape of the crops."""
    shapes = {}
    for batch, height, width in CROPS:
        for block in resnest101_d8_blocks(batch, height, width):
            B, RC, H, W = block.y_shape
            shapes.setdefault((B, block.radix, RC // block.radix, H, W), f"{batch}x{height}x{width}:{block.name}")
    return {name: shape for shape, name in shapes.items()}


def run_model(exe, mode, sms, shapes):
    stdin = "".join(f"{name} {' '.join(map(str, shape))}\n" for name, shape in shapes.items())
    out = subprocess.run([exe, mode, str(sms)], input=stdin, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        tag, kernel, layout, dtype, name, blocks, in_flight, *moved = line.split()
        rows.append(dict(kernel=kernel, layout=layout, dtype=dtype, shape=name, blocks=int(blocks),
                         in_flight=float(in_flight), moved=float(moved[0]) if moved else None,
                         loaded_per_sm=float(moved[1]) if moved else None))
    return rows


@pytest.mark.parametrize("gpu", GPUS)
def test_launch_model_meets_the_goals_at_every_stage_shape(exe, gpu):
    sms = GPUS[gpu]
    shapes = stage_shapes()
    rows = run_model(exe, "model", sms, shapes)
    assert len(rows) == len(shapes) * len(KERNELS) * 2 * len(DTYPES)
    few_blocks = [r for r in rows if r["blocks"] < MIN_BLOCKS_PER_SM * sms]
    assert not few_blocks, f"{gpu}: fewer than {MIN_BLOCKS_PER_SM} blocks per SM: {few_blocks[:5]}"
    # A tensor smaller than 16 KB per SM (bf16 y of 1x512x512 at layer2: 2 MiB, 15.9 KB per H100 SM) can at best
    # be in flight whole.
    starved = [r for r in rows if r["in_flight"] < min(MIN_BYTES_IN_FLIGHT_PER_SM, r["loaded_per_sm"])]
    assert not starved, f"{gpu}: less than 16 KB in flight per SM: {starved[:5]}"


def test_previous_geometry_fails_the_goals(exe):
    """The model of the geometry the header replaced: one block per (sample, channel) and one load per stream in
    flight. Hand-computed: layer1 of a 2x512x1024 crop has B*C = 2*64 = 128 items, so 128 blocks on 132 SMs;
    bytes in flight per SM for fp32 pool = 128/132 blocks x 256 threads x 4 bytes."""
    rows = run_model(exe, "legacy", 132, {"city-layer1": (2, 2, 64, 128, 256)})
    pool = next(r for r in rows if r["kernel"] == "pool" and r["dtype"] == "fp32")
    assert pool["blocks"] == 128
    assert pool["in_flight"] == pytest.approx(128 / 132 * 256 * 4, abs=1)
    # per (sample, split channel) kernels had 256 blocks: every one is under 4 per SM
    assert all(r["blocks"] < MIN_BLOCKS_PER_SM * 132 for r in rows)


@pytest.mark.parametrize(
    "shape, sms, kernel, layout, blocks, in_flight",
    [
        # layer1 of 2x512x1024, NCHW pool: rows = B*R*C = 256 of P = 32768, steps of 128 threads x 8 loads = 1024
        # values. The target of 16*132 = 2112 blocks asks for ceil(2112/256) = 9 chunks of ceil(32768/9) = 3641
        # values, rounded up to half steps (512): 4096, so 8 chunks, 2048 blocks; min(8, 2048/132) = 8 resident
        # blocks x 128 threads x 8 loads x 4 bytes = 32 KB per SM.
        ((2, 2, 64, 128, 256), 132, "pool", "nchw", 2048, 32768),
        # layer4 of 1x512x512, channels_last bn_stats: N = 1024 channels, 32 tiles; ceil(2112/32) = 66 runs (at
        # most 4096/(8 loads x 4 lanes) = 128 keep a full step) of ceil(4096/66) = 63 positions: 66 runs, 2112
        # blocks; 8 x 128 x 8 x 4 bytes.
        ((1, 2, 512, 64, 64), 132, "bn_stats", "cl", 2112, 32768),
        # combine, radix 2, NCHW at layer1 of 1x512x512: rows = B*C = 64 of 16384, steps of 128 x 4 values per
        # split: 33 chunks wanted, at most 16384/512 = 32 full steps: 32 chunks, 2048 blocks; 8 resident x 128
        # threads x 2 splits x 4 loads x 4 bytes.
        ((1, 2, 64, 128, 128), 132, "combine", "nchw", 2048, 32768),
        # A100: 16*108 = 1728 target blocks; layer3 of 1x1024x2048 NCHW backward_reduce: rows = 512 of 32768,
        # 2 streams of 4 loads: 4 chunks of 8192, 2048 blocks; 8 x 128 x 2 x 4 x 4 bytes.
        ((1, 2, 256, 128, 256), 108, "backward_reduce", "nchw", 2048, 32768),
    ],
)
def test_launch_model_against_hand_computed_numbers(exe, shape, sms, kernel, layout, blocks, in_flight):
    rows = run_model(exe, "model", sms, {"s": shape})
    row = next(r for r in rows if r["kernel"] == kernel and r["layout"] == layout and r["dtype"] == "fp32")
    assert row["blocks"] == blocks
    assert row["in_flight"] == pytest.approx(in_flight, abs=1)


@pytest.mark.parametrize(
    "sms, shape",
    [
        (132, (2, 2, 5, 37, 41)),  # odd sizes, one chunk per row with a tail
        (3, (1, 2, 3, 64, 97)),  # few SMs: rows of 6208 values in several chunks, each with a tail
        (4, (1, 4, 3, 64, 96)),  # radix 4 (combine's 2-load steps), chunks without a tail in NCHW
        (132, (1, 1, 7, 1, 1)),  # one value per row
        (2, (3, 2, 20, 33, 65)),  # 40 split channels: a partial channel tile in channels_last
        (2, (1, 3, 5, 17, 19)),  # radix 3: combine's generic instance (splits one after another)
    ],
)
def test_every_element_once_and_every_partial_in_its_own_slot(exe, sms, shape):
    out = subprocess.run([exe, "cover", str(sms), *map(str, shape)], check=True, capture_output=True,
                         text=True).stdout
    lines = [line.split() for line in out.splitlines()]
    assert {(l[1], l[2]) for l in lines} == {(k, lay) for k in KERNELS for lay in ("nchw", "cl")}
    for _tag, kernel, layout, U, V, elements, once, slots, distinct, bad in lines:
        B, R, C, H, W = shape
        expected = B * C * H * W if kernel == "combine" else B * R * C * H * W
        assert int(elements) == expected, (kernel, layout)
        assert int(once) == expected and int(bad) == 0, (kernel, layout, U, V, once, bad)
        assert int(distinct) == int(slots), (kernel, layout, U, V)
