"""torch.compile of the backbone under bf16 autocast on the CPU, against the same block in eager mode.

Inductor's layout optimisation turns bf16 convolutions channels_last on the CPU and copies their outputs back to
the strides an opaque op was traced with. With torch 2.13 that copy hands NaNs to the op in some graphs, whatever
the op is: the second test shows it with a two-line custom op and no code of this project. Where it shows depends
on the machine: always where Inductor vectorises below AVX-512 (AVX2, or ATEN_CPU_CAPABILITY=avx2/default), on an
Intel Xeon VM with AVX-512 too, not on an AMD EPYC (Zen 4, AVX-512 with native bf16). So the two-line test is a strict
xfail where the code is below AVX-512 (it reports when a torch release fixes the bug), and the bottleneck test is an
xfail only where that two-line case fails on the machine running it, and must pass everywhere else. Workaround
meanwhile: torch._inductor.config.layout_optimization = False (docs/deployment.md)."""
import functools

import pytest
import torch
import torch._dynamo

from resnest_fast.backend import available_backends
from resnest_fast.models import ResNeSt

INDUCTOR_BUG = "Inductor (torch 2.13, CPU, bf16) passes NaN to opaque ops after its channels_last conv layout"


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "reference"])
def test_a_compiled_bottleneck_under_bf16_autocast_equals_eager(backend):
    if _bug_shows_here():
        pytest.xfail(INDUCTOR_BUG + " (the two-line case below fails on this machine)")
    torch.manual_seed(0)
    net = ResNeSt(depth=50, stem_channels=16, base_channels=8, backend=backend).eval()
    block = net.layer3[0]
    x = torch.randn(1, block.inplanes, 8, 16)
    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = block(x).float()
        got = torch.compile(block)(x).float()
    torch._dynamo.reset()
    assert not got.isnan().any()
    # the same bf16 maths in another fusion order: a few bf16 ulps of the output's scale
    assert (got - want).abs().max().item() <= 0.05 * max(1.0, want.abs().max().item())


@torch.library.custom_op("resnest_fast_test::mean_hw", mutates_args=())
def _mean_hw(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(dim=(2, 3)).to(x.dtype)


@_mean_hw.register_fake
def _(x):
    return x.new_empty(x.shape[:2])


def _two_line_case():
    """(eager, compiled) outputs of a grouped conv feeding a two-line custom op, under bf16 autocast."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 64, 3, padding=1, groups=2, bias=False).eval()
    scale = torch.rand(64) + 0.5

    def f(x):
        y = conv(x)
        return _mean_hw(y), _mean_hw(y * scale[:, None, None])

    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(1, 32, 8, 16)
        want = f(x)
        got = torch.compile(f)(x)
    torch._dynamo.reset()
    return want, got


def _assert_intact(want, got):
    for a, b in zip(want, got):
        assert not b.isnan().any()
        torch.testing.assert_close(b.float(), a.float(), atol=0.05, rtol=0.05)


@functools.cache
def _bug_shows_here() -> bool:
    try:
        _assert_intact(*_two_line_case())
    except AssertionError:
        return True
    return False


def _vectorised_below_avx512() -> bool:
    from torch._inductor import cpu_vec_isa

    return not isinstance(cpu_vec_isa.pick_vec_isa(), cpu_vec_isa.VecAVX512)


def test_inductor_hands_custom_ops_intact_bf16_conv_outputs(request):
    if not _vectorised_below_avx512():
        pytest.skip("with AVX-512 code the bug depends on the CPU; the bottleneck test checks for it on this one")
    request.applymarker(pytest.mark.xfail(strict=True, reason=INDUCTOR_BUG))
    _assert_intact(*_two_line_case())
