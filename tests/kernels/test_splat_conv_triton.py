"""The Triton splat_conv_pool (resnest_fast/kernels/splat_conv.py) against F.conv2d + splat_pool's references, and
its launch geometry at the ResNeSt-101-D8 stage shapes.

Without a GPU the kernel runs through Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET);
with one, the tensors go on it and the kernel is compiled. Rule (flash-attention's, as tests/kernels/
test_splat_triton.py): |triton - ref64| <= 2 * |reference in the same dtype - ref64| + atol + rtol * max |ref64|,
ref64 the reference in float64 on the same (rounded) inputs; floors per dtype in TOLERANCES.
"""
import itertools
import os

import pytest
import torch

if not torch.cuda.is_available():  # as tests/conftest.py, for a run of this file alone
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from resnest_fast import _extension as ext  # noqa: E402

if not torch.cuda.is_available() and ext.triton_interpreter_problem():
    pytest.skip(ext.triton_interpreter_problem(), allow_module_level=True)

import resnest_fast.kernels.splat_conv as splat_conv  # noqa: E402
from benchmarks.stage_shapes import resnest101_d8_blocks  # noqa: E402
from resnest_fast.kernels import splat  # noqa: E402
from resnest_fast.ops import splat_conv_pool, splat_conv_pool_reference  # noqa: E402
from resnest_fast.ops.registrations import register_triton_ops  # noqa: E402

assert register_triton_ops()

OPS = torch.ops.resnest_fast
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

TOLERANCES = {  # dtype -> (atol, rtol) of the floor
    torch.float32: (1e-6, 1e-5),
    torch.bfloat16: (1e-3, 8e-3),
    torch.float16: (1e-4, 1e-3),
}
C = 6  # output channels per split: C/groups = 3 is odd, and no tile side is a multiple of it

# (radix, groups, Cin): conv groups radix*groups; Cin/(radix*groups) = 6, 3, 6, 2 input channels per group.
STRUCTURE = [(2, 1, 12), (2, 2, 12), (1, 2, 12), (4, 2, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _cases():
    cases = []
    for i, ((radix, groups, cin), dilation, layout) in enumerate(
        itertools.product(STRUCTURE, (1, 2), ("contiguous", "channels_last"))
    ):
        dtype = DTYPES[(i + i // 4) % 3]  # every dtype meets both layouts and both dilations
        params_fp32 = dtype != torch.float32 and (i // 2) % 2 == 0  # bn0 folded in float32 under a half conv
        name = f"r{radix}g{groups}-cin{cin}-d{dilation}-{layout}-{str(dtype)[6:]}{'-f32params' if params_fp32 else ''}"
        cases.append(pytest.param(radix, groups, cin, dilation, layout, dtype, params_fp32, id=name))
    cases.append(pytest.param(2, 1, 12, 4, "channels_last", torch.float32, False, id="r2g1-cin12-d4-channels_last"))
    return cases


def _inputs(radix, groups, cin, dtype, layout, params_fp32, b=2, hw=(7, 9), seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = radix * C
    x = torch.randn(b, cin, *hw, generator=gen).to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, cin // (radix * groups), 3, 3, generator=gen) / 3).to(DEVICE, dtype)
    pdt = torch.float32 if params_fp32 else dtype
    scale = (1 + 0.5 * torch.randn(k, generator=gen)).to(DEVICE, pdt)
    shift = (0.5 * torch.randn(k, generator=gen)).to(DEVICE, pdt)
    return x, weight, scale, shift


def _assert_close(got, same, ref64, dtype, what):
    atol, rtol = TOLERANCES[dtype]
    for name, g, s, r in zip(("y", "gap"), got, same, ref64):
        assert g.dtype == dtype and g.shape == r.shape, (what, name, g.dtype, g.shape)
        err = (g.double() - r).abs().max().item()
        ref_err = (s.double() - r).abs().max().item()
        bound = 2 * ref_err + atol + rtol * r.abs().max().item()
        assert err <= bound, f"{what} {name}: max error {err:.3g} > {bound:.3g} (reference in {dtype}: {ref_err:.3g})"


def _check(radix, groups, dilation, x, weight, scale, shift, what=""):
    got = splat_conv_pool(x, weight, scale, shift, radix, groups, dilation, backend="triton")
    same = splat_conv_pool_reference(x, weight, scale, shift, radix, groups, dilation)
    ref64 = splat_conv_pool_reference(*(t.double() for t in (x, weight, scale, shift)), radix, groups, dilation)
    _assert_close(got, same, ref64, x.dtype, what)
    return got


@pytest.fixture
def one_sm(monkeypatch):
    """Interpreted programs cost ~50 ms each: with one SM the tile stays whole (the launch geometry of a small GPU),
    which halves the programs of these tiny shapes. test_several_tiles_* covers split geometry."""
    if DEVICE.type == "cpu":
        monkeypatch.setattr(splat_conv, "num_sms", lambda x: 1)


@pytest.mark.parametrize("radix, groups, cin, dilation, layout, dtype, params_fp32", _cases())
def test_matches_conv_and_pool_reference(one_sm, radix, groups, cin, dilation, layout, dtype, params_fp32):
    x, weight, scale, shift = _inputs(radix, groups, cin, dtype, layout, params_fp32)
    y, _ = _check(radix, groups, dilation, x, weight, scale, shift)
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_several_tiles_channel_blocks_and_steps(monkeypatch, layout):
    """Tiles smaller than the tensor in every direction, each with a masked tail: 3 x 2 position rectangles of 1 x 16
    (the last column partial), 2 output-channel blocks per group (20 = 16 + 4), 2 input-channel steps per tap (20 =
    16 + 4); the finishing pass then adds 6 tiles x 2 splits of partial sums per channel."""
    monkeypatch.setattr(splat_conv, "TILE", {"fp32": (16, 16, 16, 4), "tensor_core": (16, 16, 16, 4)})
    monkeypatch.setattr(splat_conv, "num_sms", lambda x: 1)
    radix, groups, cin, k, hw = 2, 1, 40, 40, (3, 19)
    lp = splat_conv.launch_params(1, cin, k, *hw, radix, groups, torch.float32, layout == "channels_last", 1)
    assert (lp.block_h, lp.block_w, lp.tiles_h, lp.tiles_w) == (1, 16, 3, 2)
    assert (lp.n_blocks, lp.c_steps, lp.finish_rows) == (2, 2, 12) and lp.programs == 6 * 2 * 2
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, cin, *hw, generator=gen).to(DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(k, cin // radix, 3, 3, generator=gen) / 6).to(DEVICE)
    scale, shift = (torch.rand(k, generator=gen) + 0.5).to(DEVICE), torch.randn(k, generator=gen).to(DEVICE)
    _check(radix, groups, 2, x, weight, scale, shift)


def test_bit_reproducible(one_sm):
    """No atomics: the same inputs give the same bits, run after run."""
    x, weight, scale, shift = _inputs(2, 2, 12, torch.float32, "channels_last", False)
    first = OPS.triton_splat_conv_pool(x, weight, scale, shift, 2, 2, 1)
    second = OPS.triton_splat_conv_pool(x, weight, scale, shift, 2, 2, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_opcheck_and_compile_fullgraph(one_sm):
    """The fake kernel agrees with the launcher (strides included), and torch.compile(fullgraph=True) keeps the op
    (aot_eager: Inductor would only add compile time on the CPU)."""
    x, weight, scale, shift = _inputs(2, 2, 8, torch.float32, "channels_last", False, b=1, hw=(3, 5))
    torch.library.opcheck(OPS.triton_splat_conv_pool.default, (x, weight, scale, shift, 2, 2, 1),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: splat_conv_pool(*t, 2, 2, 1, backend="triton"), fullgraph=True,
                             backend="aot_eager")
    for got, expected in zip(compiled(x, weight, scale, shift), OPS.triton_splat_conv_pool(x, weight, scale, shift,
                                                                                            2, 2, 1)):
        assert torch.equal(got, expected)


def test_inference_only_and_input_checks():
    x, weight, scale, shift = _inputs(2, 1, 4, torch.float32, "contiguous", False, b=1, hw=(2, 2))
    with pytest.raises(RuntimeError, match="inference-only"):
        splat_conv_pool(x.requires_grad_(), weight, scale, shift, 2, 1, 1, backend="triton")
    y, _ = OPS.triton_splat_conv_pool(x, weight, scale, shift, 2, 1, 1)
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()
    x = x.detach()
    with pytest.raises(ValueError, match="weight must have shape"):
        splat_conv_pool(x, weight[:, :1], scale, shift, 2, 1, 1, backend="triton")
    with pytest.raises(ValueError, match="no C\\+\\+ kernel"):
        splat_conv_pool(x, weight, scale, shift, 2, 1, 1, backend="cuda")
    with pytest.raises(TypeError, match="the reference runs any dtype"):
        OPS.triton_splat_conv_pool(x.double(), weight.double(), scale, shift, 2, 1, 1)
    y, gap = OPS.triton_splat_conv_pool(x[:0], weight, scale, shift, 2, 1, 1)
    assert y.shape == (0, 2 * C, 2, 2) and gap.shape == (0, C)


# ----------------------------------------------------------------------------------------------- launch geometry

SMS = {"H100": 132, "A100": 108}
SHARED_BYTES = {"H100": 227 * 1024, "A100": 163 * 1024}  # the most a block may use
# Cityscapes (512x1024) and ADE20k (512x512) crops at batch 1 and 2, and a whole 1024x2048 image at batch 1.
CROPS = [(1, 512, 1024), (2, 512, 1024), (1, 512, 512), (2, 512, 512), (1, 1024, 2048)]


def _stage_convs():
    """(name, block) per distinct conv input shape: x (B, C, H, W) -> y (B, radix*C, H, W), groups 1."""
    for batch, height, width in CROPS:
        seen = set()
        for blk in resnest101_d8_blocks(batch, height, width):
            if blk.x_shape not in seen:
                seen.add(blk.x_shape)
                yield f"{batch}x{height}x{width}-{blk.name}", blk


@pytest.mark.parametrize("gpu", SMS)
def test_every_stage_conv_fills_the_gpu(gpu):
    """>= MIN_PROGRAMS_PER_SM programs per SM at every stage conv, batch 1 included; the pipeline's buffers fit in
    shared memory; masked tile tails waste <= 25 % of the multiply-adds; the finishing pass moves <= 10 % of what
    the conv stores."""
    failures = []
    for (name, blk), dtype, cl in itertools.product(_stage_convs(), (torch.float32, torch.bfloat16), (False, True)):
        m = splat_conv.launch_model(blk.batch, blk.channels, blk.radix * blk.channels, blk.height, blk.width,
                                    blk.radix, blk.groups, dtype, cl, SMS[gpu])
        where = f"{name} {str(dtype)[6:]} {'channels_last' if cl else 'NCHW'}"
        if m.params.programs < splat.MIN_PROGRAMS_PER_SM * SMS[gpu]:
            failures.append(f"{where}: {m.params.programs} programs < {splat.MIN_PROGRAMS_PER_SM} x {SMS[gpu]}")
        if m.shared_bytes > SHARED_BYTES[gpu]:
            failures.append(f"{where}: {m.shared_bytes} B of shared memory")
        if m.tile_flops > 1.25 * m.flops:
            failures.append(f"{where}: tiles issue {m.tile_flops / m.flops:.2f}x the useful multiply-adds")
        if m.finish_bytes > 0.1 * m.bytes_stored:
            failures.append(f"{where}: finishing pass {m.finish_bytes} B > 10 % of {m.bytes_stored} B")
    assert not failures, "\n".join(failures)


def test_geometry_at_batch_1():
    """Cityscapes layer3 at batch 1 (x 1x256x64x128, 2 groups of 128 -> 256), worked out by hand: bf16 starts at
    128 x 128 tiles (64 tiles x 2 groups x 2 blocks = 256 programs), halves positions (512, still < 528), then
    channels: 64 x 64 -> 1024 programs."""
    lp = splat_conv.launch_params(1, 256, 512, 64, 128, 2, 1, torch.bfloat16, True, 132)
    assert (lp.block_h, lp.block_w, lp.block_n, lp.block_k, lp.num_warps) == (4, 16, 64, 64, 4)
    assert (lp.tiles, lp.n_blocks, lp.c_steps, lp.programs) == (128, 4, 2, 1024)
    assert lp.finish_rows == 256 and lp.finish_programs == 4
    lp = splat_conv.launch_params(2, 256, 512, 64, 128, 2, 1, torch.bfloat16, True, 132)  # training batch
    assert (lp.block_m, lp.block_n, lp.num_warps, lp.programs) == (64, 128, 4, 1024)


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_launcher_uses_launch_params(channels_last):
    """What the launcher launches is what launch_params says (recorded on meta tensors: nothing runs)."""
    B, cin, k, H, W = 2, 256, 512, 64, 128
    x = torch.empty(B, cin, H, W, device="meta", dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.empty(k, cin // 2, 3, 3, device="meta", dtype=torch.bfloat16)
    scale, shift = torch.empty(k, device="meta"), torch.empty(k, device="meta")
    lp = splat_conv.launch_params(B, cin, k, H, W, 2, 1, torch.bfloat16, channels_last)
    with splat.record_launches() as launches:
        y, gap = splat_conv.splat_conv_pool(x, weight, scale, shift, 2, 1, 2)
    (kernel, programs, warps, _args, constexprs), finish = launches
    assert kernel is splat_conv._conv_bn_relu_pool_kernel and (programs, warps) == (lp.programs, lp.num_warps)
    assert (constexprs["BLOCK_H"], constexprs["BLOCK_W"], constexprs["BLOCK_N"], constexprs["BLOCK_K"]) == (
        lp.block_h, lp.block_w, lp.block_n, lp.block_k)
    assert constexprs["num_stages"] == lp.num_stages and constexprs["UPCAST"] is False
    assert finish[0] is splat_conv._gap_finish_kernel and finish[1] == lp.finish_programs
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last and gap.shape == (B, k // 2)
