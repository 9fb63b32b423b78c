"""resnest_fast.convert on the real mmseg ResNeSt (and timm's real SplitAttn source when timm is installed): the
converted model computes what the original did, keeps its parameters (the same objects) and state_dict keys."""
import copy

import pytest
import torch
from torch import nn

import resnest_fast
from resnest_fast.conversion import from_module
from resnest_fast.nn import SplitAttentionConv2d
from tests.mmseg_reference import import_mmseg_resnest
from tests.parity import randomize_model
from tests.timm_reference import timm_layer, timm_package
from resnest_fast.testing.tolerances import assert_max_abs


def mmseg_backbone(**kwargs):
    mmseg = import_mmseg_resnest()
    args = dict(depth=50, stem_channels=16, base_channels=8, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                contract_dilation=True)
    args.update(kwargs)
    return randomize_model(mmseg.ResNeSt(**args))


def run(model, x):
    x = x.clone().requires_grad_(True)
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    return list(outs) + [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("radix,groups", [(2, 1), (4, 2)])
def test_mmseg_resnest_converts_and_computes_the_same(train, radix, groups):
    ref = mmseg_backbone(radix=radix, groups=groups, base_width=8 if groups > 1 else 4)
    ours = copy.deepcopy(ref)
    params_before = [id(p) for p in ours.parameters()]
    keys_before = list(ours.state_dict())
    assert resnest_fast.convert(ours) == 16  # one per bottleneck of ResNeSt-50
    assert sum(isinstance(m, SplitAttentionConv2d) for m in ours.modules()) == 16
    assert [id(p) for p in ours.parameters()] == params_before
    assert list(ours.state_dict()) == keys_before
    if train:  # float64: deep train-mode gradients are only comparable element by element there
        ref.double()
        ours.double()
    ref.train(train)
    ours.train(train)
    x = torch.randn(4, 3, 37, 45, dtype=torch.float64 if train else torch.float32)
    tol = 1e-9 if train else 1e-4
    for i, (a, b) in enumerate(zip(run(ours, x), run(ref, x))):
        assert_max_abs(f"tensor {i}", a, b, tol=tol * (max(1.0, b.abs().max().item()) if train else 1.0))


def test_converted_model_is_optimised_like_ours():
    ref = mmseg_backbone()
    ref.eval()  # mmseg's ResNet.train returns None: no chaining
    ours = copy.deepcopy(ref)
    resnest_fast.convert(ours)
    fast = resnest_fast.optimize_for_inference(ours)
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        for a, b in zip(fast(x), ref(x)):
            assert_max_abs("optimised converted mmseg", a, b, tol=1e-4)


@pytest.mark.parametrize("radix,groups,rd", [(2, 1, None), (4, 2, 16), (1, 1, None)])
def test_timm_split_attn_converts_and_computes_the_same(radix, groups, rd):
    split_attn = timm_layer("split_attn")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = split_attn.SplitAttn(32, 32, kernel_size=3, stride=2, groups=groups, radix=radix,
                                             rd_channels=rd, norm_layer=nn.BatchNorm2d)

        def forward(self, x):
            return (self.attn(x),)

    ref = randomize_model(Net())
    ours = copy.deepcopy(ref)
    assert resnest_fast.convert(ours) == 1 and isinstance(ours.attn, SplitAttentionConv2d)
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        x = torch.randn(4, 32, 11, 13)
        for i, (a, b) in enumerate(zip(run(ours, x), run(ref, x))):
            assert_max_abs(f"train={train} tensor {i}", a, b, tol=1e-4)


def test_unsupported_variants_stay_and_are_named():
    split_attn = timm_layer("split_attn")
    net = nn.Sequential(split_attn.SplitAttn(16, 16, radix=2),  # no norm_layer: bn0 is an Identity
                        split_attn.SplitAttn(16, 16, radix=2, norm_layer=nn.BatchNorm2d))
    with pytest.warns(UserWarning, match=r"left 1 module\(s\) unfused: 0: bn0 is a Identity"):
        assert resnest_fast.convert(net) == 1
    assert type(net[0]).__name__ == "SplitAttn" and isinstance(net[1], SplitAttentionConv2d)


def test_a_norm_with_its_own_activation_is_fused_only_where_the_maths_is_the_same():
    """timm's BatchNormAct2d as SplitAttn's norm_layer: with SiLU the norm's activation would be dropped by the fused
    ops (left unfused, named); with ReLU (followed by the block's ReLU anyway) it is fused and gives timm's
    outputs and running statistics."""
    import functools

    timm = timm_package()
    split_attn = timm_layer("split_attn")
    x = torch.randn(4, 16, 9, 11)
    for act, fused in ((nn.SiLU, False), (nn.ReLU, True)):
        norm = functools.partial(timm.layers.BatchNormAct2d, act_layer=act)
        ref = randomize_model(nn.ModuleList([split_attn.SplitAttn(16, 16, radix=2, norm_layer=norm)]))
        ref.forward = lambda inp, m=ref: (m[0](inp),)
        ours = copy.deepcopy(ref)
        ours.forward = lambda inp, m=ours: (m[0](inp),)
        if fused:
            assert resnest_fast.convert(ours) == 1 and isinstance(ours[0], SplitAttentionConv2d)
        else:
            with pytest.warns(UserWarning, match=r"unfused: 0: bn0 is a BatchNormAct2d with a SiLU activation"):
                assert resnest_fast.convert(ours) == 0
            assert type(ours[0]).__name__ == "SplitAttn"
        for train in (False, True):  # forward only: timm's own module fails backward with a ReLU there
            ref.train(train)
            ours.train(train)
            with torch.no_grad():
                assert_max_abs(f"{act.__name__} train={train}", ours(x)[0], ref(x)[0], tol=1e-4)
        for (name, a), (_, b) in zip(ours.named_buffers(), ref.named_buffers()):
            assert_max_abs(f"{act.__name__} {name}", a, b, tol=1e-5)


def test_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        resnest_fast.convert("model")
    mmseg = import_mmseg_resnest()
    block = mmseg.SplitAttentionConv2d(16, 16, 3, padding=1, norm_cfg=dict(type="BN"))
    with pytest.raises(ValueError, match="from_module"):
        resnest_fast.convert(block)
    assert isinstance(from_module(block), SplitAttentionConv2d)
    assert resnest_fast.convert(nn.Sequential(nn.Conv2d(3, 3, 1))) == 0
