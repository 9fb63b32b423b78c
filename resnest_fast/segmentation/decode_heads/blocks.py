"""mmcv.cnn's building blocks as the decode heads use them, with mmcv's submodule names so checkpoints load:
ConvModule (conv -> norm -> ReLU), DepthwiseSeparableConvModule, and mmseg's bilinear `resize`; plus the
argument checks the heads share (errors name the argument)."""
from typing import Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from resnest_fast.nn import build_norm
from resnest_fast.utils import int_pair

__all__ = ["ConvModule", "DepthwiseSeparableConvModule", "resize", "check_int", "check_ints"]

IntPair = Union[int, Tuple[int, int]]


def check_int(name: str, value, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_ints(name: str, values, minimum: int) -> Tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or len(values) == 0:
        raise TypeError(f"{name} must be a non-empty tuple or list of ints, got {values!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def check_act_cfg(act_cfg: Optional[dict]) -> bool:
    """mmcv's act_cfg restricted to what the heads use: None (no activation) or ReLU."""
    if act_cfg is None:
        return False
    if not isinstance(act_cfg, dict) or act_cfg.get("type") != "ReLU" or set(act_cfg) - {"type", "inplace"}:
        raise ValueError(f"act_cfg must be None or dict(type='ReLU'), got {act_cfg!r}")
    return True


class ConvModule(nn.Module):
    """conv -> norm -> ReLU, mmcv's ConvModule for the default order, with its submodule names
    (`conv`, `bn`, `activate`) so mmcv checkpoints load.

    (B, in_channels, H, W) -> (B, out_channels, H', W'). `bias='auto'` (mmcv's default) gives the conv a bias
    only when no norm follows. `norm_cfg=None` means no norm; `act_cfg=None` means no activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: Union[bool, str] = "auto",
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = dict(type="ReLU"),
        inplace: bool = True,
    ):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if bias != "auto" and not isinstance(bias, bool):
            raise ValueError(f"bias must be True, False or 'auto', got {bias!r}")
        with_norm = norm_cfg is not None
        with_act = check_act_cfg(act_cfg)
        if bias == "auto":
            bias = not with_norm
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            int_pair(kernel_size, "kernel_size", 1),
            stride=int_pair(stride, "stride", 1),
            padding=int_pair(padding, "padding", 0),
            dilation=int_pair(dilation, "dilation", 1),
            groups=groups,
            bias=bias,
        )
        # mmcv names the norm after its abbreviation: 'bn' for BN and SyncBN, the only norms build_norm makes.
        self.bn = build_norm(norm_cfg, out_channels) if with_norm else None
        self.activate = nn.ReLU(inplace=act_cfg.get("inplace", inplace)) if with_act else None
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's: Kaiming normal (fan_out, relu), zero bias, norm weight 1 and bias 0."""
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if self.bn is not None:
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise kxk ConvModule (groups = in_channels) then pointwise 1x1 ConvModule, each with its own norm and
    ReLU: mmcv's module with its names (`depthwise_conv`, `pointwise_conv`).

    (B, in_channels, H, W) -> (B, out_channels, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = dict(type="ReLU"),
    ):
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size): mmseg's `resize` in the mode the heads use (its
    warning about align_corners sizes aside)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
