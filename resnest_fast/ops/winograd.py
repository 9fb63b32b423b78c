"""conv3x3_winograd: a 3x3 convolution (stride 1, zero padding = dilation, any dilation and groups) as Winograd
F(2x2, 3x3), for optimize_for_inference on CPU.

    out = relu?(conv2d(x, weight, bias, stride=1, padding=dilation, dilation=dilation, groups=groups) + other)

Why: on a CPU the big 3x3 convolutions of a ResNeSt-101-D8 segmenter (the split-attention convs of stages 3-4,
the 3x3 bottleneck of the ASPP head) run at the FMA peak in oneDNN's direct convolution, which is the whole cost
of the model. F(2x2, 3x3) computes each 2x2 output tile from a 4x4 input tile with 16 products per channel pair
instead of 36 (2.25x fewer multiply-adds), in 16 GEMMs that MKL runs at the same peak; the transforms are
memory-bound passes over the input and the output (C++ kernels, csrc/ops/cpu/winograd_kernel.cpp). Its transform
coefficients are 0, +-1 and +-1/2: against a float64 convolution its fp32 error is a small multiple (1.2-2.7x) of
the direct fp32 convolution's (tests compare both with float64; benchmarks/winograd_accuracy.py measures it). The
larger F(4x4, 3x3) would save more multiply-adds but errs one to two decimal digits more, whatever its points.

Dilation d is handled exactly, without zeros in the kernel: the output splits into d*d phases (h mod d, w mod d),
each an undilated 3x3 convolution of the matching input phase (csrc/ops/winograd_geometry.h gives the
tiling). A phase's row count is rounded up to an even number; for big dilations on small maps (DeepLabV3's
ASPP at dilation 12-36) that rounding wastes most of the work, which `winograd_worthwhile` accounts for.

Layout: x is read channels_last (converted if it is not); the output is channels_last.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv3x3_winograd", "conv3x3_winograd_reference", "winograd_weight_transform",
           "winograd_weight_inverse", "float64_chunk",
           "winograd_input_transform_reference", "winograd_output_transform_reference", "winograd_tiles",
           "winograd_worthwhile", "HAS_WINOGRAD_KERNELS", "WINOGRAD_MIN_CHANNELS"]

_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _has_kernels() -> bool:
    from resnest_fast import _extension as ext

    return bool(ext.HAS_C) and hasattr(torch.ops.resnest_fast, "winograd_conv3x3")


HAS_WINOGRAD_KERNELS = _has_kernels()


def winograd_tiles(height: int, width: int, dilation: int) -> Tuple[int, int]:
    """(tile rows, tile columns) per sample and phase: each phase's rows and columns rounded up to even."""
    return -(-height // (2 * dilation)), -(-width // (2 * dilation))


# Input channels per group from which F(2x2, 3x3) beats oneDNN's direct convolution: the 16 GEMMs need enough
# depth to run near peak, and the memory-bound transforms must stay small against them.
WINOGRAD_MIN_CHANNELS = 64


def winograd_worthwhile(in_channels_per_group: int, height: int, width: int, dilation: int) -> bool:
    """Whether F(2x2, 3x3) is expected to beat oneDNN's direct convolution on CPU for this conv and input size:
    enough channels per group (WINOGRAD_MIN_CHANNELS) and little padding waste. The computed area is the image
    rounded up to whole 2x2 tiles of every dilation phase; the saving is 36/16 = 2.25x before that waste, and
    DeepLabV3's ASPP at dilation 12-36 on a 32x64 map would compute 1.7-4.5x its area (oneDNN's direct conv
    skips the taps that fall in the padding instead)."""
    th, tw = winograd_tiles(height, width, dilation)
    computed = (2 * dilation * th) * (2 * dilation * tw)
    return in_channels_per_group >= WINOGRAD_MIN_CHANNELS and computed <= 1.25 * height * width


def float64_chunk(elements_per_channel: int) -> int:
    """How many output channels of a weight to take at a time through float64 intermediates (the weight
    transforms and the BN fold): a whole 2560 -> 512 weight in float64 would put ~0.5 GB on the peak."""
    return max(1, (1 << 18) // max(1, elements_per_channel))


def winograd_weight_transform(weight: Tensor, groups: int) -> Tensor:
    """U = G w G^T for weight (K, C/groups, 3, 3), computed in float64, returned in weight's dtype with shape
    (groups * 16, C/groups, K/groups): the right-hand operands of the 16 GEMMs of every group."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must be (K, C/groups, 3, 3), got shape {tuple(weight.shape)}")
    K, cg = weight.shape[:2]
    if groups < 1 or K % groups:
        raise ValueError(f"groups ({groups}) must be >= 1 and divide the output channels ({K})")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    kg = K // groups
    out = torch.empty(groups, 16, cg, kg, dtype=weight.dtype, device=weight.device)
    step = float64_chunk(cg * 16)
    for gi in range(groups):
        for k0 in range(0, kg, step):
            w = weight[gi * kg + k0: gi * kg + min(k0 + step, kg)].detach().double()
            u = torch.einsum("ai,kcij,bj->kcab", g, w, g)  # (chunk, C/groups, 4, 4)
            out[gi, :, :, k0: k0 + w.shape[0]] = u.reshape(w.shape[0], cg, 16).permute(2, 1, 0)
    return out.reshape(groups * 16, cg, kg)


def winograd_weight_inverse(u: Tensor, groups: int) -> Tensor:
    """The 3x3 weight w (K, C/groups, 3, 3) back from U = winograd_weight_transform(w, groups), computed in
    float64: rows/columns 0 and 3 of G are unit vectors and row 1 is (1/2)(1, 1, 1), so w = L U L^T with
    L = ((1, 0, 0, 0), (-1, 2, 0, -1), (0, 0, 0, 1)) (L G = I). Exact up to U's rounding (a few ulps of the
    4x4 tile sums)."""
    _, cg, kg = u.shape
    left = torch.tensor(((1.0, 0, 0, 0), (-1, 2, 0, -1), (0, 0, 0, 1)), dtype=torch.float64, device=u.device)
    tiles = u.detach().reshape(groups, 4, 4, cg, kg)
    out = torch.empty(groups, kg, cg, 3, 3, dtype=u.dtype, device=u.device)
    step = float64_chunk(cg * 16)
    for k0 in range(0, kg, step):
        t = tiles[..., k0: k0 + step].double()
        out[:, k0: k0 + t.shape[-1]] = torch.einsum("ia,gabck,jb->gkcij", left, t, left)
    return out.reshape(groups * kg, cg, 3, 3)


def _phases(x_nhwc: Tensor, dilation: int) -> Tuple[Tensor, int, int]:
    """x (B, H, W, C) zero-padded and viewed as (B, d, d, Hs + 2, Ws + 2, C): phase (p, q) with one row and
    column of padding around it, rows per phase rounded up to even."""
    B, H, W, C = x_nhwc.shape
    d = dilation
    th, tw = winograd_tiles(H, W, d)
    hs, ws = 2 * th, 2 * tw
    padded = F.pad(x_nhwc, (0, 0, d, d + ws * d - W, d, d + hs * d - H))
    return padded.view(B, hs + 2, d, ws + 2, d, C).permute(0, 2, 4, 1, 3, 5), th, tw


def winograd_input_transform_reference(x: Tensor, dilation: int, groups: int) -> Tensor:
    """V = B^T d B of every 4x4 tile: x (B, C, H, W) -> (groups, 16, tiles, C/groups), tiles numbered as
    ((b*d + p)*d + q)*th*tw + t*tw + s (csrc/ops/winograd_geometry.h)."""
    B, C, H, W = x.shape
    phases, th, tw = _phases(x.permute(0, 2, 3, 1), dilation)
    rows = [phases[:, :, :, r: r + 2 * th: 2] for r in range(4)]  # (B, d, d, th, Ws + 2, C) each

    def combine(parts, coeffs):
        out = None
        for part, c in zip(parts, coeffs):
            if c:
                out = part * c if out is None else out + part * c
        return out

    t_rows = [combine(rows, _BT[i]) for i in range(4)]
    v = torch.stack([torch.stack([combine([t[..., s: s + 2 * tw: 2, :] for s in range(4)], _BT[j]) for j in range(4)])
                     for t in t_rows])  # (4, 4, B, d, d, th, tw, C)
    v = v.reshape(16, -1, groups, C // groups).permute(2, 0, 1, 3)
    return v.contiguous()


def winograd_output_transform_reference(m: Tensor, bias: Optional[Tensor], other: Optional[Tensor], batch: int,
                                        height: int, width: int, dilation: int, relu: bool) -> Tensor:
    """relu?(A^T M A + bias + other): M (groups, 16, tiles, K/groups) -> (batch, K, height, width)
    channels_last."""
    groups, _, _, kg = m.shape
    K, d = groups * kg, dilation
    th, tw = winograd_tiles(height, width, d)
    mm = m.permute(1, 2, 0, 3).reshape(4, 4, batch, d, d, th, tw, K)
    s = torch.stack([mm[0] + mm[1] + mm[2], mm[1] - mm[2] - mm[3]])  # (2, 4, ...)
    y = torch.stack([s[:, 0] + s[:, 1] + s[:, 2], s[:, 1] - s[:, 2] - s[:, 3]], dim=1)  # (u, v, B, p, q, t, s, K)
    # output row h = (2t + u)*d + p, column w = (2s + v)*d + q
    out = y.permute(2, 5, 0, 3, 6, 1, 4, 7).reshape(batch, 2 * th * d, 2 * tw * d, K)[:, :height, :width]
    if bias is not None:
        out = out + bias
    if other is not None:
        out = out + other.permute(0, 2, 3, 1)
    if relu:
        out = torch.relu(out)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def conv3x3_winograd_reference(x: Tensor, u: Tensor, bias: Optional[Tensor] = None, other: Optional[Tensor] = None,
                               dilation: int = 1, groups: int = 1, relu: bool = False) -> Tensor:
    """conv3x3_winograd in PyTorch ops, on the whole image at once (the C++ kernel goes block by block)."""
    v = winograd_input_transform_reference(x, dilation, groups)
    m = torch.bmm(v.view(16 * groups, v.shape[2], v.shape[3]), u).view(groups, 16, v.shape[2], u.shape[2])
    return winograd_output_transform_reference(m, bias, other, x.shape[0], x.shape[2], x.shape[3], dilation, relu)


def conv3x3_winograd(x: Tensor, u: Tensor, bias: Optional[Tensor] = None, other: Optional[Tensor] = None,
                     dilation: int = 1, groups: int = 1, relu: bool = False) -> Tensor:
    """relu?(conv2d(x, weight, bias, padding=dilation, dilation=dilation, groups=groups) + other) for x
    (B, C, H, W) float32, with u = winograd_weight_transform(weight, groups); returns (B, K, H, W)
    channels_last. Inference only (no autograd). The C++ kernel runs on CPU float32 when built, the reference
    elsewhere."""
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if groups < 1 or x.shape[1] % groups:
        raise ValueError(f"groups ({groups}) must be >= 1 and divide x.shape[1] ({x.shape[1]})")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if u.dim() != 3 or u.shape[0] != 16 * groups or u.shape[1] * groups != x.shape[1]:
        raise ValueError(f"u must be winograd_weight_transform(weight, groups={groups}) for {x.shape[1]} input "
                         f"channels, of shape ({16 * groups}, {x.shape[1] // groups}, K/groups); got "
                         f"{tuple(u.shape)}")
    if HAS_WINOGRAD_KERNELS and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.resnest_fast.winograd_conv3x3(x, u, bias, other, dilation, groups, relu)
    return conv3x3_winograd_reference(x, u, bias, other, dilation, groups, relu)
