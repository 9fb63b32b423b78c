"""benchmarks/stage_shapes.py: the derived split-attention blocks of ResNeSt-101-D8 against forward hooks on the
real backbones (mmseg's own and resnest_fast's), the shape sets of the two benchmark suites, and the --bench-shapes
option that picks them."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks.stage_shapes import distinct_blocks, module_shapes, op_shapes, resnest101_d8_blocks

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Odd sizes run on real CPU tensors, so every stride-2 step (stem, max pool, layer2's average pool) rounds through
# the real kernels; the full sizes (the seed's crops, and 1024x2048) on the meta device: shapes only.
SIZES = [(1, 45, 37, "cpu"), (1, 67, 98, "cpu"), (2, 512, 1024, "meta"), (4, 512, 512, "meta"),
         (1, 1024, 2048, "meta")]


def _build(which):
    if which == "resnest_fast":
        from resnest_fast.models import resnest101_d8

        return resnest101_d8()
    from resnest_fast.segmentation import load_config
    from tests.mmseg_reference import import_mmseg

    backbones = import_mmseg("mmseg.models.backbones")
    cfg = dict(load_config("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024")["model"]["backbone"])
    cfg.pop("type")
    cfg["norm_cfg"] = dict(type="BN", requires_grad=True)
    return backbones.ResNeSt(**cfg)


@pytest.fixture(scope="module")
def backbone():
    built = {}

    def get(which, device):
        if (which, device) not in built:
            with torch.device(device):
                built[(which, device)] = _build(which)
            built[(which, device)].eval()  # mmseg's ResNet.train() returns None, so no chaining
        return built[(which, device)]

    return get


def _seen_by_hooks(model, x):
    """What every SplitAttentionConv2d's conv gets and gives, in forward order."""
    seen = []

    def hook(module, inputs, out):
        conv = module.conv
        seen.append((tuple(inputs[0].shape), tuple(out.shape), conv.stride, conv.padding, conv.dilation,
                     module.radix, module.groups, module.fc1.out_channels))

    modules = [m for m in model.modules() if type(m).__name__ == "SplitAttentionConv2d"]
    handles = [m.conv.register_forward_hook(lambda conv, inputs, out, m=m: hook(m, inputs, out)) for m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("which", ["mmseg", "resnest_fast"])
@pytest.mark.parametrize("batch,height,width,device", SIZES)
def test_blocks_are_those_the_real_backbones_run(backbone, which, batch, height, width, device):
    seen = _seen_by_hooks(backbone(which, device), torch.randn(batch, 3, height, width, device=device))
    blocks = resnest101_d8_blocks(batch, height, width)
    want = [(b.x_shape, b.y_shape, (1, 1), (b.dilation,) * 2, (b.dilation,) * 2, b.radix, b.groups, b.inter_channels)
            for b in blocks]
    assert len(blocks) == 33
    assert seen == want


def test_bad_sizes_name_the_argument():
    for args, name in (((0, 64, 64), "batch"), ((1, 64.0, 64), "height"), ((1, 64, -2), "width")):
        with pytest.raises(ValueError, match=name):
            resnest101_d8_blocks(*args)


def test_distinct_blocks_cover_every_block_once():
    blocks = resnest101_d8_blocks(2, 512, 1024)
    distinct = distinct_blocks(blocks)
    assert sum(count for _, _, count in distinct) == 33
    assert [(label, b.y_shape, count) for label, b, count in distinct] == [
        ("layer1", (2, 128, 128, 256), 3), ("layer2.0", (2, 256, 128, 256), 1), ("layer2.1+", (2, 256, 64, 128), 3),
        ("layer3", (2, 512, 64, 128), 23), ("layer4", (2, 1024, 64, 128), 3)]


def test_op_shapes():
    assert {name: b.y_shape for name, b in op_shapes("quick").items()} == {"quick": (2, 128, 32, 32)}
    stages = {name: b.y_shape for name, b in op_shapes("stages").items()}
    # Cityscapes 512x1024 batch 2 and ADE20k 512x512 batch 4: 1/4 resolution in layer1 and layer2's first
    # block, 1/8 after; 2*C channels; layer3 at Cityscapes is the headline shape 2x512x64x128
    assert stages == {
        "city-layer1": (2, 128, 128, 256), "city-layer2.0": (2, 256, 128, 256), "city-layer2.1+": (2, 256, 64, 128),
        "city-layer3": (2, 512, 64, 128), "city-layer4": (2, 1024, 64, 128),
        "ade-layer1": (4, 128, 128, 128), "ade-layer2.0": (4, 256, 128, 128), "ade-layer2.1+": (4, 256, 64, 64),
        "ade-layer3": (4, 512, 64, 64), "ade-layer4": (4, 1024, 64, 64)}
    assert list(op_shapes("all")) == ["quick"] + list(stages)


def test_module_shapes():
    quick = {name: (b.x_shape, b.dilation) for name, b in module_shapes("quick").items()}
    assert quick == {"quick": ((2, 64, 32, 32), 1), "quick-dilated": ((2, 128, 16, 16), 2)}
    stages = {name: (b.x_shape, b.dilation) for name, b in module_shapes("stages").items()}
    # a stage's first block runs at half the stage's dilation (contract_dilation), layer2's at 1/4 resolution
    assert stages == {
        "cityscapes-s1": ((2, 64, 128, 256), 1), "cityscapes-s2-first": ((2, 128, 128, 256), 1),
        "cityscapes-s2": ((2, 128, 64, 128), 1), "cityscapes-s3-first": ((2, 256, 64, 128), 1),
        "cityscapes-s3": ((2, 256, 64, 128), 2), "cityscapes-s4-first": ((2, 512, 64, 128), 2),
        "cityscapes-s4": ((2, 512, 64, 128), 4),
        "ade20k-s1": ((4, 64, 128, 128), 1), "ade20k-s2-first": ((4, 128, 128, 128), 1),
        "ade20k-s2": ((4, 128, 64, 64), 1), "ade20k-s3-first": ((4, 256, 64, 64), 1),
        "ade20k-s3": ((4, 256, 64, 64), 2), "ade20k-s4-first": ((4, 512, 64, 64), 2),
        "ade20k-s4": ((4, 512, 64, 64), 4)}
    assert list(module_shapes("all")) == list(quick) + list(stages)


def test_bad_shape_set_is_refused():
    for fn in (op_shapes, module_shapes):
        with pytest.raises(ValueError, match="shape set must be one of quick, stages, all, got 'huge'"):
            fn("huge")


def _collect(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "--benchmark-only", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_bench_shapes_option_reaches_both_suites():
    """`--bench-shapes stages` parametrises the op and the module suite (the module suite once read an environment
    variable instead and ignored the option); a name that is not a set is refused naming the option."""
    run = _collect("benchmarks/test_bench_ops.py", "benchmarks/test_bench_module.py", "--bench-shapes", "stages")
    assert run.returncode == 0, run.stdout + run.stderr
    ids = [line.split("[", 1)[1].rstrip("]") for line in run.stdout.splitlines() if "[" in line]
    assert {i for i in ids if i.startswith("city-layer3-")}, "the op suite did not get the stage shapes"
    assert "cityscapes-s3-first" in ids  # test_summary's id: the shape name alone
    assert not [i for i in ids if i.startswith("quick")]
    bad = _collect("benchmarks/test_bench_module.py", "--bench-shapes", "huge")
    assert bad.returncode != 0 and "--bench-shapes" in bad.stderr and "invalid choice" in bad.stderr

