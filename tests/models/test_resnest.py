"""resnest_fast.models.ResNeSt against mmsegmentation's real ResNeSt: state_dict names and shapes (the reference
facts in shared/mmseg_reference), features and gradients in eval and train mode, and mmseg's freezing rules."""
import copy
import json
import pathlib

import pytest
import torch

from resnest_fast.backend import available_backends
from resnest_fast.models import ResNeSt, create_backbone, default_cfgs, list_backbones, resnest101_d8
from resnest_fast.segmentation import build_segmentor
from resnest_fast.testing.small_models import small_model_cfg
from tests.mmseg_reference import import_mmseg_resnest
from tests.parity import randomize_model
from resnest_fast.testing.tolerances import assert_max_abs

REFERENCE_FACTS = pathlib.Path(__file__).resolve().parents[1] / "data" / "mmseg_reference"
FAST_BACKENDS = [b for b in available_backends("cpu") if b != "triton"]
# Small widths keep the 16-block network fast; the layouts are those of the D8 configs and of the plain network.
SMALL = dict(depth=50, stem_channels=16, base_channels=8)
LAYOUTS = {
    "d8": dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True),
    "plain": dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1)),
    "radix4-groups2": dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True, radix=4, groups=2,
                           base_width=8),
    "radix1-caffe": dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), radix=1, style="caffe"),
}


def pair(layout, backend=None, **extra):
    mmseg = import_mmseg_resnest()
    kwargs = dict(SMALL, **LAYOUTS[layout], **extra)
    ref = mmseg.ResNeSt(**kwargs)
    randomize_model(ref)
    ours = ResNeSt(**kwargs, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def run(module, x, seed=1):
    x = x.clone().requires_grad_(True)
    outs = module(x)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    loss.backward()
    return list(outs) + [x.grad] + [p.grad for p in module.parameters()]


def test_resnest101_d8_state_dict_is_the_references():
    """Keys, shapes and dtypes of mmseg's ResNeSt-101 backbone in the D8 configs (recorded from mmseg 1.2.2)."""
    facts = json.loads((REFERENCE_FACTS / "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024.json").read_text())
    expected = [(k[len("backbone."):], s, t) for k, s, t in facts["state_dict"] if k.startswith("backbone.")]
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in resnest101_d8().state_dict().items()]
    assert sorted(ours) == sorted(expected)
    assert sum(p.numel() for p in resnest101_d8().parameters()) == facts["num_params"]["backbone"]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_features_and_gradients_match_mmseg(layout, backend):
    ref, ours = pair(layout, backend=backend)
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, 45, 61)  # odd sizes: stride and ceil_mode mistakes change the shapes
    got, want = run(ours, x), run(ref, x)
    names = [f"out{i}" for i in range(4)] + ["grad x"] + [f"grad {n}" for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        assert_max_abs(name, a, b, tol=1e-4)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_train_mode_matches_mmseg(backend):
    """Batch statistics, two steps; running statistics follow BatchNorm's. Gradients are compared in float64,
    where the maths must agree to rounding. In fp32 a deep network's gradients are not comparable element by
    element: a pre-activation within rounding of 0 flips a ReLU mask and moves a whole gradient term, which train-
    mode BN then spreads over every earlier layer (one flipped element of 30k moves the stem's gradients by ~1 %;
    mmseg's fp32 run does that against its own float64 run too, depending on the seed). fp32 outputs are
    checked."""
    ref, ours = pair("d8", backend=backend)
    ref32, ours32 = copy.deepcopy(ref), copy.deepcopy(ours)
    ref.double()
    ours.double()
    for m in (ref, ours, ref32, ours32):
        m.train()
    for step in range(2):
        x = torch.randn(4, 3, 33, 41, dtype=torch.float64)
        for m in (ref, ours):
            m.zero_grad()
        got, want = run(ours, x), run(ref, x)
        scale = max(t.abs().max().item() for t in want)
        for i, (a, b) in enumerate(zip(got, want)):
            assert_max_abs(f"step {step}, tensor {i}", a, b, tol=1e-9 * scale)
        with torch.no_grad():
            for i, (a, b) in enumerate(zip(ours32(x.float()), ref32(x.float()))):
                assert_max_abs(f"fp32 step {step}, output {i}", a, b, tol=1e-4)
    for (name, b_ref), (_, b) in zip(ref.named_buffers(), ours.named_buffers()):
        assert_max_abs(name, b, b_ref, tol=1e-9)
    for (name, b_ref), (_, b) in zip(ref32.named_buffers(), ours32.named_buffers()):
        assert_max_abs(name, b, b_ref, tol=1e-4)


def test_frozen_stages_and_norm_eval_follow_mmseg():
    ref, ours = pair("d8", frozen_stages=2, norm_eval=True)
    for mode in (True, False, True):
        ours.train(mode)
        ref.train(mode)  # mmseg's train() returns None
        for (name, m_ref), (_, m) in zip(ref.named_modules(), ours.named_modules()):
            assert m.training == m_ref.training, f"{name}: training={m.training}, mmseg {m_ref.training}"
        for (name, p_ref), (_, p) in zip(ref.named_parameters(), ours.named_parameters()):
            assert p.requires_grad == p_ref.requires_grad, name
    assert not any(p.requires_grad for p in ours.layer2.parameters())
    assert all(p.requires_grad for p in ours.layer3.parameters())


def test_norm_eval_keeps_every_norms_statistics_in_a_training_backbone_as_mmseg():
    """norm_eval=True in train mode: the features, gradients and (unchanged) running statistics of mmseg's
    backbone, split attention's bn0/bn1 included."""
    ref, ours = pair("d8", norm_eval=True)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ref.train()
    ours.train()
    x = torch.randn(2, 3, 40, 56)
    got, want = run(ours, x), run(ref, x)
    scale = max(t.abs().max().item() for t in want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_max_abs(f"tensor {i}", a, b, tol=1e-5 * scale)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed under norm_eval"


@pytest.mark.parametrize("out_indices", [(3, 0), (2, 2), (3, 2), (1,)])
def test_out_channels_describe_the_features_returned_as_mmseg_returns_them(out_indices):
    """forward returns the chosen stages in stage order, once each, like mmseg's; out_channels has one entry per
    returned feature, in that order (before, it followed out_indices as written), and a head reading a feature is
    checked against it: in_index=1 of out_indices=(3, 2) is stage 3's 256 channels at these widths."""
    ref, ours = pair("d8", out_indices=out_indices)
    x = torch.randn(1, 3, 32, 32)
    ours.eval()
    ref.eval()  # mmseg's train()/eval() return None
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert [f.shape for f in got] == [f.shape for f in want]
    assert list(ours.out_channels) == [f.shape[1] for f in want]
    if out_indices == (3, 2):
        cfg = small_model_cfg()
        cfg["backbone"]["out_indices"] = out_indices
        cfg["decode_head"].update(in_index=1, in_channels=256)
        cfg["auxiliary_head"].update(in_index=0, in_channels=128)
        build_segmentor(cfg)
        cfg["decode_head"].update(in_index=0)
        with pytest.raises(ValueError, match=r"decode_head\.in_channels=256 does not fit feature 0 of the backbone, "
                                             r"which has 128 channels"):
            build_segmentor(cfg)


def test_activation_checkpointing_gives_the_same_gradients():
    _, ours = pair("d8")
    cp = copy.deepcopy(ours)
    for block in cp.modules():
        if hasattr(block, "with_cp"):
            block.with_cp = True
    for m in (ours, cp):
        m.eval()
    x = torch.randn(2, 3, 32, 32)
    for name, a, b in zip(range(100), run(cp, x), run(ours, x)):
        assert_max_abs(str(name), a, b, tol=1e-6)


def test_zero_init_residual_makes_each_block_its_shortcut():
    net = ResNeSt(**SMALL, **LAYOUTS["d8"], zero_init_residual=True)
    assert all(float(b.bn3.weight.abs().sum()) == 0 for b in net.modules() if hasattr(b, "bn3"))
    net.eval()
    block = net.layer3[1]  # identity shortcut: out = relu(x)
    x = torch.randn(1, block.inplanes, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_default_initialisation_is_mmsegs():
    """Without a checkpoint, every norm layer (bn3 included) starts at weight 1 and bias 0, as mmseg 1.2.2's ResNeSt
    after init_weights(), and the convs have mmseg's Kaiming fan_out spread."""
    ref = import_mmseg_resnest().ResNeSt(**SMALL, **LAYOUTS["d8"])
    ref.init_weights()
    ours = ResNeSt(**SMALL, **LAYOUTS["d8"])
    ref_norms = {k: v for k, v in ref.state_dict().items() if k.endswith(("bn3.weight", "bn3.bias"))}
    assert ref_norms
    for key, value in ours.state_dict().items():
        if key in ref_norms:
            torch.testing.assert_close(value, ref_norms[key], rtol=0, atol=0, msg=key)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        if a.dim() == 4:  # Kaiming normal, fan_out: same spread (the draws differ)
            assert abs(float(a.std()) / float(b.std()) - 1) < 0.5, name


def test_out_indices_and_output_strides():
    net = resnest101_d8(out_indices=(0, 3)).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 16, 24), (1, 2048, 8, 12)]
    assert net.out_channels == (256, 2048)


def test_factories_cover_the_table():
    assert set(list_backbones()) == set(default_cfgs)
    assert {f"resnest{d}_d8" for d in (50, 101, 152, 200, 269)} <= set(default_cfgs)
    net = create_backbone("resnest269", num_stages=1, strides=(1,), dilations=(1,), out_indices=(0,))
    assert net.depth == 269 and len(net.layer1) == 3
    assert resnest101_d8.__name__ == "resnest101_d8"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=34), "depth"),
        (dict(depth=50, out_indices=(4,)), "out_indices"),
        (dict(depth=50, strides=(1, 2)), "strides"),
        (dict(depth=50, dcn=dict(type="DCN")), "dcn"),
        (dict(depth=50, norm_cfg=dict(type="GN")), "norm_cfg"),
        (dict(depth=50, style="tf"), "style"),
        (dict(depth=50, pretrained="open-mmlab://resnest101"), "load_pretrained"),
        (dict(depth=50, frozen_stages=7), "frozen_stages"),
    ],
)
def test_bad_arguments_name_what_is_wrong(kwargs, match):
    with pytest.raises((ValueError, NotImplementedError), match=match):
        ResNeSt(**kwargs)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnest18")


def test_repr_shows_the_blocks():
    text = repr(ResNeSt(**SMALL))
    assert "(conv2): SplitAttentionConv2d(" in text and "(avd_layer): AvgPool2d" in text
