"""bn_relu_conv against the eager modules conv(relu(bn(x))): outputs, every gradient, BatchNorm's running
statistics, autocast, and what autograd keeps."""
import copy

import pytest
import torch
from torch import nn

from benchmarks.memory import saved_storage_bytes
from resnest_fast.nn.bn_relu_conv import bn_relu_conv, lean_bn_relu_conv_applies
from resnest_fast.testing.tolerances import assert_max_abs


def modules(c_in=8, c_out=12, groups=2, stride=1, dilation=1, bias=False, momentum=0.1):
    bn = nn.BatchNorm2d(c_in, momentum=momentum)
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return bn, conv


def step(bn, conv, x, lean, seed=1):
    x = x.clone().requires_grad_(True)
    y = bn_relu_conv(x, bn, conv, lean=lean)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    y.backward(g)
    params = [bn.weight, bn.bias, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return [y, x.grad] + [p.grad for p in params] + [bn.running_mean, bn.running_var, bn.num_batches_tracked]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2, bias=True), dict(dilation=2, groups=4),
                                    dict(momentum=None)])
def test_matches_the_eager_modules(dtype, tol, kwargs):
    bn, conv = modules(**kwargs)
    bn, conv = bn.to(dtype), conv.to(dtype)
    bn2, conv2 = copy.deepcopy(bn), copy.deepcopy(conv)
    for s in range(2):  # two steps: running statistics and num_batches_tracked accumulate
        x = torch.randn(4, 8, 9, 11, dtype=dtype) * 2 + 0.5
        for m in (bn, conv, bn2, conv2):
            m.zero_grad()
        for i, (a, b) in enumerate(zip(step(bn, conv, x, lean=True), step(bn2, conv2, x, lean=False))):
            assert_max_abs(f"step {s} tensor {i}", a.double(), b.double(), tol=tol)


def test_keeps_only_the_bn_input():
    bn, conv = modules(c_in=32, c_out=32, groups=1)
    x = torch.randn(4, 32, 40, 40, requires_grad=True)
    lean = saved_storage_bytes(lambda: bn_relu_conv(x, bn, conv, lean=True))
    eager = saved_storage_bytes(lambda: bn_relu_conv(x, bn, conv, lean=False))
    activation = x.numel() * 4
    assert eager - lean >= activation, (eager, lean)
    assert lean <= activation + 64 * 1024, lean


def test_autocast_bfloat16_matches_eager_autocast():
    bn, conv = modules()
    bn2, conv2 = copy.deepcopy(bn), copy.deepcopy(conv)
    x = torch.randn(4, 8, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = step(bn, conv, x, lean=True)
        want = step(bn2, conv2, x, lean=False)
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    assert got[3].dtype == conv.weight.dtype == torch.float32
    for i, (a, b) in enumerate(zip(got, want)):
        assert_max_abs(f"tensor {i}", a.double(), b.double(), tol=2e-2)


def test_when_the_lean_path_applies():
    bn, conv = modules()
    x = torch.randn(2, 8, 5, 5)
    assert lean_bn_relu_conv_applies(x, bn, conv)
    bn.eval()
    assert not lean_bn_relu_conv_applies(x, bn, conv)  # frozen BN: nothing to save twice
    bn.train()
    with torch.no_grad():
        assert not lean_bn_relu_conv_applies(x, bn, conv)
    assert lean_bn_relu_conv_applies(x, nn.SyncBatchNorm(8), conv)  # one process: it is a BatchNorm
    assert not lean_bn_relu_conv_applies(x, nn.GroupNorm(2, 8), conv)


def test_batch_norm_subclasses_that_keep_its_forward_take_the_lean_path():
    """mmengine's Runner puts its _BatchNormXd in place of SyncBN on one process, and mmcv's SyncBN is a subclass of
    nn.SyncBatchNorm: both compute BatchNorm2d's maths, so training under mmseg's tools keeps the memory saving.
    A subclass with its own forward may compute anything: the modules themselves run it."""
    class OwnForward(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    class NarrowerCheck(nn.BatchNorm2d):
        def _check_input_dim(self, input):
            pass

    class MmcvStyleSyncBN(nn.SyncBatchNorm):
        def _check_input_dim(self, input):
            pass

    _, conv = modules()
    x = torch.randn(2, 8, 5, 5)
    assert lean_bn_relu_conv_applies(x, NarrowerCheck(8), conv)
    assert lean_bn_relu_conv_applies(x, MmcvStyleSyncBN(8), conv)
    assert not lean_bn_relu_conv_applies(x, OwnForward(8), conv)
    bn, conv = modules()
    sub = NarrowerCheck(8)
    sub.load_state_dict(bn.state_dict())
    conv2 = copy.deepcopy(conv)
    x = torch.randn(4, 8, 9, 11)
    for i, (a, b) in enumerate(zip(step(sub, conv, x, lean=None), step(bn, conv2, x, lean=False))):
        assert_max_abs(f"tensor {i}", a, b, tol=1e-5)
