"""mmsegmentation 1.2.2's own unit tests of the decode heads, written anew against this project's classes with the
same assertions: tests/test_models/test_heads/test_fcn_head.py, test_psp_head.py, test_aspp_head.py (with the
DeepLabV3+ head) and test_decode_head.py, and the `_conv_has_norm` helper of their utils.py.

Where mmseg asserts (AssertionError) this project raises a clearer error naming the argument; those cases assert
ours and say so. Options mmseg has and this project does not implement (input_transform='resize_concat', lists of
losses, out_channels=1, samplers) raise ValueError/TypeError saying so, asserted here instead of mmseg's results.

Then what a user porting mmseg code relies on, against the installed mmseg 1.2.2 / mmcv 2.1 (skipped with the install
command where they are absent): the heads' and BaseDecodeHead's constructor defaults, the state_dict of a head built
with those defaults (no norm: convs with bias), training at batch 1, and mmcv ConvModule's public attributes.
"""
import inspect

import pytest
import torch
from torch import nn

from resnest_fast.segmentation.decode_heads import (ASPPHead, BaseDecodeHead, ConvModule, DepthwiseSeparableASPPHead,
                                                    DepthwiseSeparableConvModule, FCNHead, PSPHead, build_head)
from tests.mmseg_reference import import_mmseg

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:mmseg.*"),
              pytest.mark.filterwarnings("ignore::UserWarning:mmcv.*")]


def _conv_has_norm(module, sync_bn):
    """mmseg's tests/test_models/test_heads/utils.py helper: every ConvModule has a norm (a SyncBatchNorm, the
    class mmengine's parrots_wrapper exports on torch, when sync_bn)."""
    for m in module.modules():
        if isinstance(m, ConvModule):
            if not m.with_norm:
                return False
            if sync_bn and not isinstance(m.bn, nn.SyncBatchNorm):
                return False
    return True


def _check_norm_cfg(cls):
    # test no norm_cfg
    head = cls(in_channels=32, channels=16, num_classes=19)
    assert not _conv_has_norm(head, sync_bn=False)

    # test with norm_cfg
    head = cls(in_channels=32, channels=16, num_classes=19, norm_cfg=dict(type="SyncBN"))
    assert _conv_has_norm(head, sync_bn=True)


# --- test_fcn_head.py -------------------------------------------------------------------------------------------

def test_fcn_head():
    # mmseg: AssertionError (num_convs must be not less than 0); ours names the argument
    with pytest.raises(ValueError, match="num_convs"):
        FCNHead(in_channels=8, channels=4, num_classes=19, num_convs=-1)

    # test no norm_cfg
    head = FCNHead(in_channels=8, channels=4, num_classes=19)
    for m in head.modules():
        if isinstance(m, ConvModule):
            assert not m.with_norm

    # test with norm_cfg
    head = FCNHead(in_channels=8, channels=4, num_classes=19, norm_cfg=dict(type="SyncBN"))
    for m in head.modules():
        if isinstance(m, ConvModule):
            assert m.with_norm and isinstance(m.bn, nn.SyncBatchNorm)

    # test concat_input=False
    inputs = [torch.randn(1, 8, 23, 23)]
    head = FCNHead(in_channels=8, channels=4, num_classes=19, concat_input=False)
    assert len(head.convs) == 2
    assert not head.concat_input and not hasattr(head, "conv_cat")
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 23, 23)

    # test concat_input=True
    head = FCNHead(in_channels=8, channels=4, num_classes=19, concat_input=True)
    assert len(head.convs) == 2
    assert head.concat_input
    assert head.conv_cat.in_channels == 12
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 23, 23)

    # test kernel_size=3
    head = FCNHead(in_channels=8, channels=4, num_classes=19)
    for i in range(len(head.convs)):
        assert head.convs[i].kernel_size == (3, 3)
        assert head.convs[i].padding == 1
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 23, 23)

    # test kernel_size=1
    head = FCNHead(in_channels=8, channels=4, num_classes=19, kernel_size=1)
    for i in range(len(head.convs)):
        assert head.convs[i].kernel_size == (1, 1)
        assert head.convs[i].padding == 0
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 23, 23)

    # test num_conv
    head = FCNHead(in_channels=8, channels=4, num_classes=19, num_convs=1)
    assert len(head.convs) == 1
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 23, 23)

    # test num_conv = 0
    head = FCNHead(in_channels=8, channels=8, num_classes=19, num_convs=0, concat_input=False)
    assert isinstance(head.convs, torch.nn.Identity)
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 23, 23)


# --- test_psp_head.py -------------------------------------------------------------------------------------------

def test_psp_head():
    # mmseg: AssertionError (pool_scales must be list|tuple); ours a TypeError naming the argument
    with pytest.raises(TypeError, match="pool_scales"):
        PSPHead(in_channels=32, channels=16, num_classes=19, pool_scales=1)

    _check_norm_cfg(PSPHead)

    inputs = [torch.randn(1, 32, 45, 45)]
    head = PSPHead(in_channels=32, channels=16, num_classes=19, pool_scales=(1, 2, 3))
    assert head.psp_modules[0][0].output_size == 1
    assert head.psp_modules[1][0].output_size == 2
    assert head.psp_modules[2][0].output_size == 3
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 45, 45)


# --- test_aspp_head.py ------------------------------------------------------------------------------------------

def test_aspp_head():
    # mmseg: AssertionError (dilations must be list|tuple); ours a TypeError naming the argument
    with pytest.raises(TypeError, match="dilations"):
        ASPPHead(in_channels=32, channels=16, num_classes=19, dilations=1)

    _check_norm_cfg(ASPPHead)

    inputs = [torch.randn(1, 32, 45, 45)]
    head = ASPPHead(in_channels=32, channels=16, num_classes=19, dilations=(1, 12, 24))
    assert head.aspp_modules[0].conv.dilation == (1, 1)
    assert head.aspp_modules[1].conv.dilation == (12, 12)
    assert head.aspp_modules[2].conv.dilation == (24, 24)
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 45, 45)


def test_dw_aspp_head():
    # test w.o. c1
    inputs = [torch.randn(1, 32, 45, 45)]
    head = DepthwiseSeparableASPPHead(c1_in_channels=0, c1_channels=0, in_channels=32, channels=16, num_classes=19,
                                      dilations=(1, 12, 24))
    assert head.c1_bottleneck is None
    assert head.aspp_modules[0].conv.dilation == (1, 1)
    assert head.aspp_modules[1].depthwise_conv.dilation == (12, 12)
    assert head.aspp_modules[2].depthwise_conv.dilation == (24, 24)
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 45, 45)

    # test with c1
    inputs = [torch.randn(1, 8, 45, 45), torch.randn(1, 32, 21, 21)]
    head = DepthwiseSeparableASPPHead(c1_in_channels=8, c1_channels=4, in_channels=32, channels=16, num_classes=19,
                                      dilations=(1, 12, 24))
    assert head.c1_bottleneck.in_channels == 8
    assert head.c1_bottleneck.out_channels == 4
    assert head.aspp_modules[0].conv.dilation == (1, 1)
    assert head.aspp_modules[1].depthwise_conv.dilation == (12, 12)
    assert head.aspp_modules[2].depthwise_conv.dilation == (24, 24)
    outputs = head(inputs)
    assert outputs.shape == (1, head.num_classes, 45, 45)


# --- test_decode_head.py ----------------------------------------------------------------------------------------

def test_decode_head():
    # mmseg: AssertionError for a list of in_channels / in_index without input_transform; ours a TypeError
    with pytest.raises(TypeError, match="in_channels"):
        BaseDecodeHead([32, 16], 16, num_classes=19)
    with pytest.raises(TypeError, match="in_index"):
        BaseDecodeHead(32, 16, num_classes=19, in_index=[-1, -2])
    # mmseg: AssertionError for 'concat', and it implements 'resize_concat' / 'multiple_select'; ours implements
    # only None (the heads of the ResNeSt configs) and says so
    for transform in ("concat", "resize_concat", "multiple_select"):
        with pytest.raises(ValueError, match="input_transform="):
            BaseDecodeHead(32, 16, num_classes=19, input_transform=transform)

    with pytest.raises(ValueError):
        # out_channels should be equal to num_classes
        BaseDecodeHead(32, 16, num_classes=19, out_channels=18)

    # test out_channels
    head = BaseDecodeHead(32, 16, num_classes=2)
    assert head.out_channels == 2

    # mmseg: out_channels == 1 with num_classes == 2 is binary segmentation with a threshold; not implemented here
    with pytest.raises(ValueError, match="out_channels=1"):
        BaseDecodeHead(32, 16, num_classes=2, out_channels=1)

    # test default dropout
    head = BaseDecodeHead(32, 16, num_classes=19)
    assert hasattr(head, "dropout") and head.dropout.p == 0.1

    # test set dropout
    head = BaseDecodeHead(32, 16, num_classes=19, dropout_ratio=0.2)
    assert hasattr(head, "dropout") and head.dropout.p == 0.2

    # test no input_transform
    inputs = [torch.randn(1, 32, 45, 45)]
    head = BaseDecodeHead(32, 16, num_classes=19)
    assert head.in_channels == 32
    assert head.input_transform is None
    transformed_inputs = head._transform_inputs(inputs)
    assert transformed_inputs.shape == (1, 32, 45, 45)

    # 'loss_decode' must be a dict or sequence of dict (mmseg: TypeError, as here); sequences of losses are not
    # implemented here, a TypeError says so
    with pytest.raises(TypeError):
        BaseDecodeHead(3, 16, num_classes=19, loss_decode=["CrossEntropyLoss"])
    with pytest.raises(TypeError):
        BaseDecodeHead(3, 16, num_classes=19, loss_decode=0)
    with pytest.raises(TypeError, match="lists of losses are not supported"):
        BaseDecodeHead(3, 16, num_classes=19, loss_decode=[dict(type="CrossEntropyLoss", loss_name="loss_1")])

    # test loss_decode as a dict (mmseg: 'loss_ce' in head.loss_by_feat(...)); ours returns that entry
    inputs = torch.randn(2, 19, 8, 8).float()
    target = torch.ones(2, 64, 64).long()
    head = BaseDecodeHead(3, 16, num_classes=19,
                          loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    loss = head.loss(inputs, target)
    assert loss.dim() == 0 and torch.isfinite(loss)


# --- behaviour a port of mmseg code relies on --------------------------------------------------------------------

def _mmseg_decode_heads():
    import_mmseg("mmseg.models")
    return import_mmseg("mmseg.models.decode_heads")


def _defaults(cls, stop):
    """{name: default} of cls.__init__ and of every base class up to `stop`, subclass defaults first."""
    found = {}
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, stop)):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
                continue
            found.setdefault(p.name, p.default)
    return found


@pytest.mark.parametrize("name", ["FCNHead", "PSPHead", "ASPPHead", "DepthwiseSeparableASPPHead"])
def test_head_arguments_and_defaults_are_mmsegs(name):
    heads = _mmseg_decode_heads()
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead as MmsegBase

    theirs = _defaults(getattr(heads, name), MmsegBase)
    ours = _defaults({"FCNHead": FCNHead, "PSPHead": PSPHead, "ASPPHead": ASPPHead,
                      "DepthwiseSeparableASPPHead": DepthwiseSeparableASPPHead}[name], BaseDecodeHead)
    assert sorted(ours) == sorted(theirs)
    assert {k: ours[k] for k in theirs} == theirs


@pytest.mark.parametrize("cfg", [
    dict(type="FCNHead", in_channels=8, channels=4, num_classes=5),
    dict(type="FCNHead", in_channels=8, channels=4, num_classes=5, num_convs=1, concat_input=False, in_index=2),
    dict(type="PSPHead", in_channels=8, channels=4, num_classes=5),
    dict(type="ASPPHead", in_channels=8, channels=4, num_classes=5),
    dict(type="DepthwiseSeparableASPPHead", in_channels=8, channels=4, num_classes=5, c1_in_channels=6,
         c1_channels=2),
], ids=["fcn", "fcn_aux", "psp", "aspp", "dsaspp"])
def test_head_with_mmseg_defaults_has_mmsegs_state_dict(cfg):
    """Without norm_cfg (mmseg's default None) the convs have biases and no norms: the same keys and shapes."""
    _mmseg_decode_heads()
    registry = import_mmseg("mmseg.registry")
    ref = registry.MODELS.build(dict(cfg))
    ours = build_head(dict(cfg))
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.parametrize("cls", [PSPHead, ASPPHead])
def test_psp_and_aspp_heads_without_norm_cfg_train_at_batch_1(cls):
    """mmseg's heads train at batch 1 without norm_cfg (a 1x1 pooled branch with BN cannot)."""
    head = cls(in_channels=8, channels=4, num_classes=3).train()
    logits = head([torch.randn(1, 8, 9, 11)])
    head.loss(logits, torch.randint(0, 3, (1, 17, 21))).backward()
    assert logits.shape == (1, 3, 9, 11)


CONV_MODULE_CASES = [
    dict(args=(4, 6, 3), kwargs=dict(padding=1)),
    dict(args=(4, 6, 3), kwargs=dict(padding=2, dilation=2, norm_cfg=dict(type="BN"))),
    dict(args=(4, 6, (3, 1)), kwargs=dict(stride=(2, 1), padding=(1, 0), groups=2, bias=True,
                                          norm_cfg=dict(type="SyncBN"), act_cfg=None)),
    dict(args=(4, 4, 1), kwargs=dict(bias=False, conv_cfg=dict(type="Conv2d"), inplace=False)),
    dict(args=(4, 6, 3), kwargs=dict(padding=1, norm_cfg=dict(type="BN"), order=("norm", "conv", "act"))),
    dict(args=(4, 6, 3), kwargs=dict(padding=1, norm_cfg=dict(type="BN"), order=("act", "conv", "norm"))),
]
CONV_MODULE_ATTRIBUTES = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                          "transposed", "output_padding", "with_norm", "with_bias", "with_activation", "norm_name",
                          "order", "conv_cfg", "norm_cfg", "act_cfg", "inplace", "with_spectral_norm",
                          "with_explicit_padding"]


@pytest.mark.parametrize("case", CONV_MODULE_CASES, ids=lambda c: repr(c["kwargs"]))
def test_conv_module_attributes_and_forward_are_mmcvs(case):
    mmcv_cnn = import_mmseg("mmcv.cnn")
    ref = mmcv_cnn.ConvModule(*case["args"], **case["kwargs"])
    ours = ConvModule(*case["args"], **case["kwargs"])
    for name in CONV_MODULE_ATTRIBUTES:
        assert getattr(ours, name) == getattr(ref, name), name
    assert type(ours.norm).__name__ == type(ref.norm).__name__
    assert isinstance(ours.norm, nn.SyncBatchNorm) == isinstance(ref.norm, nn.SyncBatchNorm)
    assert hasattr(ours, "activate") == hasattr(ref, "activate")
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), ours.eval()
    x = torch.randn(2, case["args"][0], 7, 9)
    torch.testing.assert_close(ours(x), ref(x))


def test_depthwise_separable_conv_module_is_mmcvs():
    mmcv_cnn = import_mmseg("mmcv.cnn")
    kwargs = dict(padding=2, dilation=2, norm_cfg=dict(type="BN"), pw_act_cfg=None, dw_norm_cfg=None)
    ref = mmcv_cnn.DepthwiseSeparableConvModule(4, 6, 3, **kwargs)
    ours = DepthwiseSeparableConvModule(4, 6, 3, **kwargs)
    for part in ("depthwise_conv", "pointwise_conv"):
        for name in CONV_MODULE_ATTRIBUTES:
            assert getattr(getattr(ours, part), name) == getattr(getattr(ref, part), name), f"{part}.{name}"
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 4, 7, 9)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))
    with pytest.raises(ValueError, match="groups"):
        DepthwiseSeparableConvModule(4, 6, 3, groups=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(with_spectral_norm=True), "with_spectral_norm"),
    (dict(padding_mode="reflect"), "padding_mode"),
    (dict(order=("conv", "act")), "order"),
    (dict(conv_cfg=dict(type="DCNv2")), "conv_cfg"),
    (dict(efficient_conv_bn_eval=True), "efficient_conv_bn_eval"),
])
def test_conv_module_rejects_what_it_does_not_implement(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvModule(4, 4, 3, **kwargs)
