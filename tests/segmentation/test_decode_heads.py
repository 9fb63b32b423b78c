"""resnest_fast.segmentation.decode_heads against mmsegmentation 1.2.2's own decode heads and CrossEntropyLoss.

Parity (skipped with the install command when mmseg is absent): each head config of the ResNeSt table, with small
channel counts, is built by mmseg's MODELS registry and by `build_head`; mmseg's state_dict, with randomised norm
statistics and affine parameters (so a wrong conv/norm/ReLU order shows), loads into ours with strict=True. Then
  - eval: logits;
  - train: logits, loss (against `loss_by_feat`, mmseg's own path from SegDataSample labels), acc_seg, the
    gradients of every parameter and of every input feature, and the updated running statistics.
Features have odd sizes (9x13, and 17x25 for DeepLabV3+'s stage-1 input) and labels another odd size (35x51),
so every bilinear resize is non-trivial and an align_corners or size mistake changes the numbers.

The full-size configs are checked without mmseg against tests/data/mmseg_reference (the decode_head.* /
auxiliary_head.* keys, shapes, dtypes and parameter counts recorded from mmseg's eight ResNeSt models).
"""
import copy
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

from resnest_fast.segmentation.decode_heads import (
    HEADS,
    ASPPHead,
    BaseDecodeHead,
    ConvModule,
    CrossEntropyLoss,
    DepthwiseSeparableASPPHead,
    DepthwiseSeparableConvModule,
    FCNHead,
    PSPHead,
    acc_seg,
    build_head,
    build_loss,
    cross_entropy,
)
from tests.mmseg_reference import import_mmseg
from resnest_fast.testing.tolerances import assert_max_abs

# mmseg's and mmcv's own warnings (deprecations, avg_non_ignore advice, align_corners sizes, mmcv-lite) are noise
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:mmseg.*"),
              pytest.mark.filterwarnings("ignore::UserWarning:mmcv.*")]

REFERENCE = {
    path.stem: json.loads(path.read_text())
    for path in (pathlib.Path(__file__).resolve().parents[1] / "data" / "mmseg_reference").glob("resnest_*.json")
}

BN = dict(type="BN", requires_grad=True)


def ce(loss_weight=1.0, **kwargs):
    return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=loss_weight, **kwargs)


def head_cfg(kind, num_classes, **kwargs):
    cfg = dict(type=kind, in_channels=64, in_index=3, channels=16, dropout_ratio=0.1, num_classes=num_classes,
               norm_cfg=BN, align_corners=False, loss_decode=ce())
    cfg.update(kwargs)
    return cfg


# The table's head configs at small widths (stage channels 16/24/32/64 instead of 256/512/1024/2048), plus
# variants for the options the table leaves at one value. `ignored`: whether labels hold ignore_index pixels
# (mmseg's class_weight path crashes on them, see CrossEntropyLoss).
CASES = {
    "fcn": (head_cfg("FCNHead", 19, num_convs=2, concat_input=True), True),
    "fcn_aux": (head_cfg("FCNHead", 19, in_channels=32, in_index=2, channels=8, num_convs=1, concat_input=False,
                         loss_decode=ce(0.4)), True),
    "fcn_aux_150_avg_non_ignore": (head_cfg("FCNHead", 150, in_channels=32, in_index=2, channels=8, num_convs=1,
                                            concat_input=False, loss_decode=ce(0.4, avg_non_ignore=True)), True),
    "fcn_dilated_no_norm": (head_cfg("FCNHead", 19, num_convs=2, dilation=2, norm_cfg=None), True),
    "psp_150": (head_cfg("PSPHead", 150, pool_scales=(1, 2, 3, 6)), True),
    "psp_align_corners_class_weight": (head_cfg("PSPHead", 19, pool_scales=(1, 2, 3, 6), align_corners=True,
                                                loss_decode=ce(class_weight=[0.5 + 0.1 * i for i in range(19)],
                                                               avg_non_ignore=True)), False),
    "aspp": (head_cfg("ASPPHead", 19, dilations=(1, 12, 24, 36)), True),
    # 9x13 features leave dilations 12-36 mostly in the padding: small ones make every tap count
    "aspp_150_small_dilations_align_corners": (head_cfg("ASPPHead", 150, dilations=(1, 2, 3), align_corners=True),
                                               True),
    "dsaspp_150": (head_cfg("DepthwiseSeparableASPPHead", 150, dilations=(1, 12, 24, 36), c1_in_channels=16,
                            c1_channels=8), True),
    "dsaspp_small_dilations_align_corners": (head_cfg("DepthwiseSeparableASPPHead", 19, dilations=(1, 2, 3),
                                                      c1_in_channels=16, c1_channels=8, align_corners=True), True),
}


def features(requires_grad=False):
    """Backbone-like features of a D8 ResNeSt: stage 1 at stride 4, stages 2-4 at stride 8, odd sizes."""
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 16, 17, 25), (2, 24, 9, 13), (2, 32, 9, 13), (2, 64, 9, 13)]
    return tuple(torch.randn(s, generator=g).requires_grad_(requires_grad) for s in shapes)


def labels_for(num_classes, ignored=True):
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, num_classes, (2, 35, 51), generator=g)
    if ignored:
        labels[torch.rand(labels.shape, generator=g) < 0.2] = 255
    return labels


def randomize(head):
    """Norm affine parameters and running statistics, conv biases and the classifier drawn at random (convs keep
    mmcv's random Kaiming init): a wrong order of conv, norm and ReLU, or eval/train statistics mixed up, then
    changes the numbers."""
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0.0, 0.3)
        head.conv_seg.weight.normal_(0.0, 0.3)
    return head


def mmseg_head(cfg):
    registry = import_mmseg("mmseg.registry")
    import_mmseg("mmseg.models")  # registers the heads
    return registry.MODELS.build(copy.deepcopy(cfg))


def pair(cfg):
    ref = randomize(mmseg_head(cfg))
    ours = build_head(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("case", list(CASES))
def test_eval_logits_match_mmseg(case):
    cfg, _ = CASES[case]
    ref, ours = pair(cfg)
    ref.eval()
    ours.eval()
    feats = features()
    with torch.no_grad():
        expected = ref(feats)
        got = ours(feats)
    c1_size = feats[0].shape[2:] if cfg["type"] == "DepthwiseSeparableASPPHead" else feats[cfg["in_index"]].shape[2:]
    assert got.shape == (2, cfg["num_classes"], *c1_size)
    assert_max_abs("logits", got, expected)


@pytest.mark.parametrize("case", list(CASES))
def test_train_loss_and_gradients_match_mmseg(case):
    cfg, ignored = CASES[case]
    structures = import_mmseg("mmseg.structures")
    pixel_data = import_mmseg("mmengine.structures").PixelData
    ref, ours = pair(cfg)
    ref.train()
    ours.train()
    labels = labels_for(cfg["num_classes"], ignored)
    samples = []
    for lab in labels:
        sample = structures.SegDataSample()
        sample.gt_sem_seg = pixel_data(data=lab[None])
        samples.append(sample)

    # Dropout stays on (p=0.1): Dropout2d is the only random op of either forward, so the same seed before each
    # gives both the same channel mask, provided it is applied at mmseg's place (on the classifier's input).
    feats_ref, feats_ours = features(True), features(True)
    torch.manual_seed(3)
    logits_ref = ref(feats_ref)
    torch.manual_seed(3)
    logits_ours = ours(feats_ours)
    assert_max_abs("train logits", logits_ours, logits_ref)

    losses = ref.loss_by_feat(logits_ref, samples)
    loss = ours.loss(logits_ours, labels)
    assert loss.dim() == 0
    assert_max_abs("loss", loss, losses["loss_ce"])
    acc = ours.acc_seg(logits_ours, labels)
    assert acc.shape == (1,)
    assert_max_abs("acc_seg", acc, losses["acc_seg"])
    if ignored:  # with ignored pixels, mmseg's default mean is below torch's (it divides by all pixels)
        assert 0 < (labels == 255).float().mean() < 1

    losses["loss_ce"].backward()
    loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        assert_max_abs(f"grad {name}", p.grad, ref_params[name].grad)
    for i, (a, b) in enumerate(zip(feats_ours, feats_ref)):
        assert (a.grad is None) == (b.grad is None), f"feats[{i}] used by one head only"
        if a.grad is not None:
            assert_max_abs(f"grad feats[{i}]", a.grad, b.grad)
    ref_buffers = dict(ref.named_buffers())
    for name, b in ours.named_buffers():
        assert_max_abs(f"buffer {name}", b.float(), ref_buffers[name].float())


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_loss_module_matches_mmseg_cross_entropy(avg_non_ignore):
    """Our loss against mmseg's CrossEntropyLoss module on the same resized logits, including a batch where every
    pixel is ignored (mmseg's eps guard gives 0, not NaN)."""
    losses = import_mmseg("mmseg.models.losses")
    ref = losses.CrossEntropyLoss(loss_weight=0.4, avg_non_ignore=avg_non_ignore)
    ours = build_loss(ce(0.4, avg_non_ignore=avg_non_ignore))
    logits = torch.randn(2, 7, 35, 51)
    for labels in (labels_for(7), torch.full((2, 35, 51), 255)):
        assert_max_abs("loss", ours(logits, labels, ignore_index=255), ref(logits, labels, ignore_index=255))
    acc_ref = losses.accuracy(logits, labels_for(7), ignore_index=255)
    assert_max_abs("acc_seg", acc_seg(logits, labels_for(7)), acc_ref)


def test_loss_denominator_is_mmseg_default():
    """avg_non_ignore=False divides by every pixel, ignored ones included; True by the valid pixels (torch's
    mean); class weights by the weights of the valid pixels (torch's weighted mean)."""
    logits = torch.randn(2, 5, 6, 7)
    labels = labels_for(5)[:, :6, :7]
    total = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
    valid = (labels != 255).sum()
    assert 0 < valid < labels.numel()
    torch.testing.assert_close(cross_entropy(logits, labels), total / labels.numel())
    torch.testing.assert_close(cross_entropy(logits, labels, avg_non_ignore=True), total / valid)
    weight = torch.rand(5) + 0.5
    torch.testing.assert_close(
        cross_entropy(logits, labels, class_weight=weight, avg_non_ignore=True),
        F.cross_entropy(logits, labels, weight=weight, ignore_index=255),
    )


def test_head_loss_resizes_logits_to_labels():
    head = FCNHead(8, 4, num_classes=3, num_convs=1, concat_input=False, loss_decode=ce(0.4))
    logits = torch.randn(2, 3, 5, 6)
    labels = labels_for(3)[:, :9, :11]
    resized = F.interpolate(logits, (9, 11), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head.loss(logits, labels), 0.4 * cross_entropy(resized, labels))
    torch.testing.assert_close(head.acc_seg(logits, labels), acc_seg(resized, labels))


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("which", ["decode_head", "auxiliary_head"])
def test_full_size_state_dict_is_mmseg(name, which):
    """The table's full-size configs give exactly mmseg's keys (in its order), shapes, dtypes and counts."""
    ref = REFERENCE[name]
    head = build_head(ref["model_cfg"][which])
    got = [[f"{which}.{k}", list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in head.state_dict().items()]
    assert got == [entry for entry in ref["state_dict"] if entry[0].startswith(which + ".")]
    assert sum(p.numel() for p in head.parameters()) == ref["num_params"][which]


def test_build_head_accepts_mmseg_defaults_and_syncbn():
    cfg = head_cfg("ASPPHead", 19, dilations=(1, 12, 24, 36), norm_cfg=dict(type="SyncBN", requires_grad=True),
                   conv_cfg=None, act_cfg=dict(type="ReLU"), input_transform=None, sampler=None, out_channels=19,
                   init_cfg=dict(type="Normal", std=0.01, override=dict(name="conv_seg")))
    head = build_head(cfg)
    assert isinstance(head, ASPPHead) and type(head.bottleneck.bn).__name__ == "SyncBatchNorm"
    assert set(HEADS) == {"FCNHead", "PSPHead", "ASPPHead", "DepthwiseSeparableASPPHead"}


def test_initialisation_is_mmsegs():
    head = FCNHead(64, 16, num_classes=19, norm_cfg=BN)
    assert torch.all(head.conv_seg.bias == 0) and abs(head.conv_seg.weight.std().item() - 0.01) < 0.003
    bn = head.convs[0].bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    fan_out = 16 * 9
    assert abs(head.convs[0].conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.02
    assert ConvModule(4, 4, 3).conv.bias is not None  # no norm: the conv has a bias (mmcv's bias='auto')


def test_forward_errors_name_the_feature():
    head = build_head(CASES["fcn_aux"][0])
    feats = features()
    with pytest.raises(ValueError, match=r"feats\[in_index=2\] must be \(B, 32, H, W\)"):
        head(feats[:2] + (feats[3], feats[3]))
    with pytest.raises(IndexError, match="in_index=2 is out of range for 2 features"):
        head(feats[:2])
    with pytest.raises(TypeError, match="feats must be a tuple or list"):
        head(feats[2])
    dsaspp = build_head(CASES["dsaspp_150"][0])
    with pytest.raises(ValueError, match=r"feats\[c1 index=0\] must be \(B, 16, H, W\)"):
        dsaspp((feats[1],) + feats[1:])


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(type="UPerHead"), ValueError, "cfg\\['type'\\] must be one of"),
        (dict(pool_scales=(1, 2)), ValueError, "unknown config keys \\['pool_scales'\\]"),
        (dict(num_clases=19), ValueError, "unknown config keys \\['num_clases'\\]"),
        (dict(conv_cfg=dict(type="DCNv2")), ValueError, "conv_cfg"),
        (dict(act_cfg=dict(type="GELU")), ValueError, "act_cfg="),
        (dict(input_transform="resize_concat"), ValueError, "input_transform="),
        (dict(sampler=dict(type="OHEMPixelSampler")), ValueError, "sampler="),
        (dict(out_channels=1), ValueError, "out_channels=1"),
        (dict(loss_decode=[ce()]), TypeError, "loss_decode must be a dict"),
        (dict(loss_decode=dict(type="DiceLoss")), ValueError, "loss_decode\\['type'\\]"),
        (dict(loss_decode=dict(ce(), use_sigmoid=True)), ValueError, "use_sigmoid"),
        (dict(loss_decode=ce(reduction="sum")), ValueError, "reduction"),
        (dict(loss_decode=ce(class_weight=[1.0] * 19)), ValueError, "class_weight needs avg_non_ignore=True"),
        (dict(loss_decode=ce(class_weight="weights.npy", avg_non_ignore=True)), TypeError, "class_weight"),
        (dict(loss_decode=ce(focal=True)), ValueError, "unknown keys \\['focal'\\]"),
        (dict(norm_cfg=dict(type="GN")), ValueError, "norm_cfg\\['type'\\]"),
        (dict(dropout_ratio=1.0), ValueError, "dropout_ratio"),
        (dict(num_classes=0), ValueError, "num_classes"),
        (dict(in_channels=64.0), TypeError, "in_channels"),
        (dict(align_corners=None), TypeError, "align_corners"),
        (dict(num_convs=-1), ValueError, "num_convs"),
        (dict(kernel_size=2), ValueError, "kernel_size"),
        (dict(dilation=0), ValueError, "dilation"),
        (dict(num_convs=0), ValueError, "num_convs=0 needs in_channels == channels"),
    ],
)
def test_build_head_rejects_bad_config(overrides, error, match):
    cfg = head_cfg("FCNHead", 19)
    cfg.update(overrides)
    with pytest.raises(error, match=match):
        build_head(cfg)


@pytest.mark.parametrize(
    "cls, kwargs, error, match",
    [
        (PSPHead, dict(pool_scales=()), TypeError, "pool_scales"),
        (PSPHead, dict(pool_scales=(1, 0)), ValueError, r"pool_scales\[1\]"),
        (ASPPHead, dict(dilations=(1, -2)), ValueError, r"dilations\[1\]"),
        (ASPPHead, dict(dilations=6), TypeError, "dilations"),
        (DepthwiseSeparableASPPHead, dict(c1_in_channels=16, c1_channels=0), ValueError, "c1_channels"),
        (DepthwiseSeparableASPPHead, dict(c1_in_channels=0, c1_channels=8), ValueError, "c1_channels"),
        (DepthwiseSeparableASPPHead, dict(c1_in_channels=-1, c1_channels=8), ValueError, "c1_in_channels"),
    ],
)
def test_heads_reject_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(64, 16, num_classes=19, **kwargs)


def test_build_head_reports_missing_keys():
    with pytest.raises(ValueError, match=r"missing \['c1_channels', 'c1_in_channels'\]"):
        build_head(head_cfg("DepthwiseSeparableASPPHead", 19))


def test_loss_rejects_bad_labels():
    head = FCNHead(8, 4, num_classes=3)
    logits = torch.randn(2, 3, 5, 6)
    with pytest.raises(TypeError, match="labels must be int64"):
        head.loss(logits, torch.zeros(2, 5, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"labels must be \(B, H, W\)"):
        head.loss(logits, torch.zeros(2, 1, 5, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_classes=3"):
        head.loss(torch.randn(2, 4, 5, 6), torch.zeros(2, 5, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="class_weight has 2 entries for 3 classes"):
        CrossEntropyLoss(class_weight=[1.0, 2.0], avg_non_ignore=True)(logits, torch.zeros(2, 5, 6, dtype=torch.int64))


def test_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        ConvModule(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="bias must be"):
        ConvModule(4, 4, 3, bias="yes")
    with pytest.raises(ValueError, match="padding"):
        ConvModule(4, 4, 3, padding=(1, 1, 1))
    with pytest.raises(ValueError, match="act_cfg"):
        DepthwiseSeparableConvModule(4, 4, 3, act_cfg=dict(type="LeakyReLU"))
    with pytest.raises(NotImplementedError):
        BaseDecodeHead(8, 4, num_classes=3)(features())


@pytest.mark.parametrize("case", ["fcn", "fcn_aux", "psp_150", "aspp", "dsaspp_150", "fcn_dilated_no_norm"])
def test_repr(case):
    head = build_head(CASES[case][0])
    text = repr(head)
    assert text.startswith(CASES[case][0]["type"] + "(")
    assert "num_classes=" in text and "align_corners=" in text and "CrossEntropyLoss(loss_weight=" in text
    assert "ConvModule(" in text
    if case == "dsaspp_150":
        assert "DepthwiseSeparableConvModule(" in text and "c1_channels=8" in text
    assert repr(CrossEntropyLoss(class_weight=[1.0, 2.0], avg_non_ignore=True)).endswith("class_weight=<2 values>)")
