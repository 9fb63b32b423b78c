"""mmsegmentation 1.2.2's own unit tests of the ResNeSt backbone (tests/test_models/test_backbones/test_resnest.py),
written anew against this project's classes with the same assertions. Where mmseg raises KeyError (an unknown depth,
from its arch_settings lookup) or AssertionError (an unknown style), this project raises a ValueError naming the
argument; those cases assert ours."""
import pytest
import torch

from resnest_fast.models import Bottleneck as BottleneckS
from resnest_fast.models import ResNeSt


def test_resnest_bottleneck():
    with pytest.raises(ValueError, match="style"):
        # Style must be in ['pytorch', 'caffe'] (mmseg: AssertionError)
        BottleneckS(64, 64, radix=2, reduction_factor=4, style="tensorflow")

    # Test ResNeSt Bottleneck structure
    block = BottleneckS(64, 256, radix=2, reduction_factor=4, stride=2, style="pytorch")
    assert block.avd_layer.stride == 2
    assert block.conv2.channels == 256

    # Test ResNeSt Bottleneck forward
    block = BottleneckS(64, 16, radix=2, reduction_factor=4)
    x = torch.randn(2, 64, 56, 56)
    x_out = block(x)
    assert x_out.shape == torch.Size([2, 64, 56, 56])


def _check_backbone(widths, **kwargs):
    # Test ResNeSt with radix 2, reduction_factor 4
    model = ResNeSt(depth=50, radix=2, reduction_factor=4, out_indices=(0, 1, 2, 3), **kwargs)
    model.init_weights()
    model.train()

    imgs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # the shapes are the test; no graph to keep
        feat = model(imgs)
    assert len(feat) == 4
    assert feat[0].shape == torch.Size([2, widths[0], 56, 56])
    assert feat[1].shape == torch.Size([2, widths[1], 28, 28])
    assert feat[2].shape == torch.Size([2, widths[2], 14, 14])
    assert feat[3].shape == torch.Size([2, widths[3], 7, 7])


def test_resnest_backbone():
    with pytest.raises(ValueError, match="depth"):
        # ResNeSt depth should be in [50, 101, 152, 200] (mmseg: KeyError)
        ResNeSt(depth=18)
    # mmseg's test at 1/8 of the widths (the full-width one below is heavy on a CPU)
    _check_backbone((32, 64, 128, 256), stem_channels=16, base_channels=8)


@pytest.mark.heavy
def test_resnest_backbone_full_width():
    _check_backbone((256, 512, 1024, 2048))
