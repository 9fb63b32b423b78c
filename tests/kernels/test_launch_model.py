"""The launch geometry of the Triton kernels against the goals of the hardware, at every ResNeSt-101-D8 stage shape.

launch_model derives programs, bytes in flight per SM and bytes moved from launch_params, the function the
launchers call (checked here by recording what they launch): >= 4 programs per SM so every SM is busy several
times over, batch 1 included, and >= 16 KB of loads in flight per SM (Little's law on an H100), on H100 (132 SMs)
and A100 (108 SMs). Where a whole launch loads less than 16 KB per SM (bf16 layer2 at 512x512, batch 1: 2 MB in
all) the goal is to have all of it in flight at once. The partial sums of the two-stage reductions cost at most a
quarter of the main kernel's traffic (the worst case: channels_last at batch 1, where tiles are only 8-16
positions deep). Pure arithmetic: no kernel runs.
"""
import itertools

import pytest
import torch

from benchmarks.stage_shapes import distinct_blocks, resnest101_d8_blocks
from resnest_fast.kernels import splat

SMS = {"H100": 132, "A100": 108}
# Inference at batch 1 (512x1024 and 1024x2048, 512x512), training at the configs' batch per GPU (2 and 4).
CROPS = [(1, 512, 1024), (1, 1024, 2048), (2, 512, 1024), (4, 512, 1024), (1, 512, 512), (4, 512, 512)]
DTYPES = [torch.float32, torch.bfloat16]


def _stage_blocks():
    for batch, height, width in CROPS:
        for label, block, _ in distinct_blocks(resnest101_d8_blocks(batch, height, width)):
            yield f"{batch}x{height}x{width}-{label}", block


STAGES = list(_stage_blocks())


@pytest.mark.parametrize("gpu", SMS)
@pytest.mark.parametrize("kernel", splat.KERNELS)
def test_every_stage_shape_fills_the_gpu(kernel, gpu):
    num_sms = SMS[gpu]
    failures = []
    for (name, blk), dtype, cl in itertools.product(STAGES, DTYPES, (False, True)):
        m = splat.launch_model(kernel, blk.batch, blk.channels, blk.height, blk.width, blk.radix, dtype, cl, num_sms)
        where = f"{name} {str(dtype)[6:]} {'channels_last' if cl else 'NCHW'}"
        if m.params.programs < splat.MIN_PROGRAMS_PER_SM * num_sms:
            failures.append(f"{where}: {m.params.programs} programs < {splat.MIN_PROGRAMS_PER_SM} x {num_sms}")
        goal = min(splat.MIN_BYTES_IN_FLIGHT_PER_SM, m.bytes_loaded / num_sms)
        if m.bytes_in_flight_per_sm < goal:
            failures.append(f"{where}: {m.bytes_in_flight_per_sm} bytes in flight per SM < {goal:.0f}")
        if m.finish_bytes_moved > 0.25 * m.bytes_moved:
            failures.append(f"{where}: finishing pass moves {m.finish_bytes_moved} B, > 25% of {m.bytes_moved} B")
        assert m.params.programs < 2**31 and m.regs_per_thread <= 255
    assert not failures, "\n".join(failures)


def test_model_numbers_at_batch_1():
    """layer4 at 512x512, batch 1, channels_last bf16 (C = 512, 64 x 64 positions), worked out by hand; then
    layer2 (C = 128), where the tile must shrink for the programs to go round."""
    blk = [b for _, b in STAGES if b.batch == 1 and b.height * b.width == 64 * 64 and b.channels == 512][0]
    m = splat.launch_model("pool", 1, blk.channels, blk.height, blk.width, 2, torch.bfloat16, True, 132)
    lp = m.params
    assert (lp.block_c, lp.block_p, lp.c_blocks) == (64, 32, 8)
    assert lp.chunks == 128 and lp.programs == 1024  # one 32-position tile per program
    assert m.bytes_in_flight_per_program == 2 * 64 * 32 * 2 and m.resident_per_sm == 8  # both splits per step
    assert m.bytes_in_flight_per_sm == 64 * 1024
    lp = splat.launch_params("pool", 1, 128, 64, 64, 2, torch.bfloat16, True, 132)
    assert (lp.block_c, lp.block_p, lp.programs) == (64, 8, 1024)  # 64 x 32 tiles would give 256 programs
    assert m.bytes_moved == 1 * 2 * 512 * 4096 * 2 + 128 * 512 * 4  # x once, then fp32 partials


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_launchers_use_launch_params(channels_last):
    """What the launchers launch is what launch_params says (recorded on meta tensors, nothing runs)."""
    B, C, H, W, radix = 2, 64, 128, 256, 2
    x = torch.empty(B, radix * C, H, W, device="meta")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    scale, shift = torch.empty(radix * C, device="meta"), torch.empty(radix * C, device="meta")
    logits = torch.empty(B, radix * C, device="meta")
    calls = {
        "pool": lambda: splat.splat_pool(x, scale, shift, radix, True),
        "pool_backward": lambda: splat.splat_pool_backward(
            torch.empty(B, C, device="meta"), x, scale, shift, radix, True
        ),
        "combine": lambda: splat.splat_combine(x, logits, scale, shift, radix, 1, True),
        "combine_backward": lambda: splat.splat_combine_backward(
            torch.empty(B, C, H, W, device="meta"), x, logits, scale, shift, radix, 1, True
        ),
        "bn_stats": lambda: splat.splat_bn_stats(x),
        "backward_reduce": lambda: splat.splat_backward_reduce(
            torch.empty(B, C, H, W, device="meta"), x, logits, scale, shift, radix, 1
        ),
        "backward_input": lambda: splat.splat_backward_input(
            torch.empty(B, C, H, W, device="meta"), torch.empty(B, C, device="meta"), x, logits, scale, shift,
            torch.empty(radix * C, device="meta"), torch.empty(radix * C, device="meta"), radix, 1
        ),
    }
    assert set(calls) == set(splat.KERNELS)
    for kernel, call in calls.items():
        lp = splat.launch_params(kernel, B, C, H, W, radix, torch.float32, channels_last)
        with splat.record_launches() as launches:
            call()
        main = launches[0]
        assert main[1] == lp.programs and main[2] == lp.num_warps, kernel
        assert (main[4]["BLOCK_C"], main[4]["BLOCK_P"]) == (lp.block_c, lp.block_p), kernel
        assert lp.programs >= splat.MIN_PROGRAMS_PER_SM * splat.DEFAULT_NUM_SMS, kernel
        if lp.finish_programs:
            assert launches[1][1] == lp.finish_programs, kernel


def test_huge_position_counts_stay_in_one_grid_dimension():
    """channels_last with > 65535 position blocks (the old third grid dimension's limit): one flat dimension."""
    for kernel in splat.KERNELS:
        lp = splat.launch_params(kernel, 1, 64, 2048, 4096, 2, torch.float32, True)
        assert lp.chunks * lp.chunk_p >= 2048 * 4096 and lp.programs < 2**31
    assert splat.launch_params("combine", 1, 64, 2048, 4096, 2, torch.float32, True).chunks > 65535
