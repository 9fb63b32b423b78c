"""depthwise_conv3x3: a dilated depthwise 3x3 convolution (stride 1, zero padding = dilation, one filter per
channel), channels_last, with its bias and ReLU fused, for optimize_for_inference on CPU.

    out = relu?(conv2d(x, weight, bias, stride=1, padding=dilation, dilation=dilation, groups=C))

Why: DeepLabV3+'s separable ASPP runs three such convs over 2048 channels at dilation 12, 24 and 36. ATen's NCHW
kernel and oneDNN's channels_last one ran them at a small fraction of the memory traffic they need (oneDNN slower
still at dilation 36, where most taps fall in the padding), while the optimized model's activations are
channels_last, so each call also paid two layout copies. The C++ kernel (csrc/ops/cpu/depthwise_kernel.cpp) writes
each channels_last output row once, skipping the taps that fall in the padding; the sums are the same 9-term sums as
the reference's, in another order (fp32 rounding).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["HAS_DEPTHWISE_KERNEL", "depthwise_conv3x3", "depthwise_conv3x3_reference"]


def _has_kernel() -> bool:
    from resnest_fast import _extension as ext

    return bool(ext.HAS_C) and hasattr(torch.ops.resnest_fast, "depthwise_conv3x3")


HAS_DEPTHWISE_KERNEL = _has_kernel()


def depthwise_conv3x3_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1,
                                relu: bool = False) -> Tensor:
    """depthwise_conv3x3 in PyTorch ops (F.conv2d), channels_last out."""
    out = F.conv2d(x, weight, bias, 1, dilation, dilation, x.shape[1])
    if relu:
        out = torch.relu(out)
    return out.contiguous(memory_format=torch.channels_last)


def depthwise_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1,
                      relu: bool = False) -> Tensor:
    """relu?(conv2d(x, weight, bias, padding=dilation, dilation=dilation, groups=C)) for x (B, C, H, W) and weight
    (C, 1, 3, 3); returns (B, C, H, W) channels_last. Inference only (no autograd). The C++ kernel runs on CPU
    float32/float64 when built, the reference elsewhere."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if tuple(weight.shape) != (x.shape[1], 1, 3, 3):
        raise ValueError(f"weight must be (C, 1, 3, 3) = ({x.shape[1]}, 1, 3, 3) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if (HAS_DEPTHWISE_KERNEL and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not (x.requires_grad or weight.requires_grad)):
        return torch.ops.resnest_fast.depthwise_conv3x3(x, weight, bias, dilation, relu)
    return depthwise_conv3x3_reference(x, weight, bias, dilation, relu)
