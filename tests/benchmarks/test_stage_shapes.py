"""The ResNeSt-101-D8 split-attention shapes of benchmarks/stage_shapes.py against forward hooks on mmseg's own
ResNeSt backbone, and the RESNEST_FAST_BENCH_SHAPES selection."""
import pytest
import torch

from benchmarks import stage_shapes
from resnest_fast.training import load_config
from tests.mmseg_reference import import_mmseg


def test_computed_shapes_are_those_mmseg_backbone_sees():
    backbones = import_mmseg("mmseg.models.backbones")
    cfg = dict(load_config("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024")["model"]["backbone"])
    cfg.pop("type")
    cfg["norm_cfg"] = dict(type="BN", requires_grad=True)
    backbone = backbones.ResNeSt(**cfg)
    backbone.eval()  # mmseg's ResNet.train() returns None, so no chaining
    seen = []
    for m in backbone.modules():
        if type(m).__name__ == "SplitAttentionConv2d":
            m.register_forward_pre_hook(
                lambda mod, args: seen.append((tuple(args[0].shape), mod.conv.dilation[0], mod.conv.stride[0],
                                               mod.conv.padding[0], mod.radix, mod.groups)))
    batch, h, w = 1, 67, 98  # odd sizes: the rounding of every stride-2 step shows
    with torch.no_grad():
        backbone(torch.randn(batch, 3, h, w))
    want = [(tuple(s[:4]), s.dilation, 1, s.dilation, 2, 1)
            for _, _, s in stage_shapes.resnest101_d8_block_shapes(batch, h, w)]
    assert seen == want


def test_stage_shapes_are_distinct_and_cover_every_block():
    shapes = stage_shapes.stage_shapes()
    assert len(set(shapes.values())) == len(shapes)
    for dataset, ((h, w), batch) in stage_shapes.CROPS.items():
        blocks = {s for _, _, s in stage_shapes.resnest101_d8_block_shapes(batch, h, w)}
        assert blocks == {s for name, s in shapes.items() if name.startswith(dataset + "-")}
    assert shapes["cityscapes-s1"] == (2, 64, 128, 256, 1)  # 512x1024 / 4, batch 2
    assert shapes["ade20k-s4"] == (4, 512, 64, 64, 4)  # 512x512 / 8, batch 4


@pytest.mark.parametrize("value,quick,stages", [(None, True, False), ("quick", True, False),
                                                ("stages", False, True), ("all", True, True)])
def test_shape_set_selection(monkeypatch, value, quick, stages):
    if value is None:
        monkeypatch.delenv(stage_shapes.ENV, raising=False)
    else:
        monkeypatch.setenv(stage_shapes.ENV, value)
    names = set(stage_shapes.module_shapes())
    assert (set(stage_shapes.QUICK) <= names) == quick
    assert (set(stage_shapes.stage_shapes()) <= names) == stages


def test_bad_shape_set_names_the_variable(monkeypatch):
    monkeypatch.setenv(stage_shapes.ENV, "huge")
    with pytest.raises(ValueError, match="RESNEST_FAST_BENCH_SHAPES"):
        stage_shapes.module_shapes()
