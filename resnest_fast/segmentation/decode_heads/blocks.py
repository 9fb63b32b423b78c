"""mmcv.cnn's building blocks as the decode heads use them, with mmcv's submodule names so checkpoints load:
ConvModule (conv -> norm -> ReLU), DepthwiseSeparableConvModule, and mmseg's bilinear `resize`; plus the
argument checks the heads share (errors name the argument)."""
from typing import Optional, Sequence, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn

from resnest_fast.nn import build_norm, check_conv_cfg
from resnest_fast.utils import int_pair

__all__ = ["ConvModule", "DepthwiseSeparableConvModule", "resize", "check_int", "check_ints", "check_act_cfg",
           "check_only"]

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
    """mmcv's act_cfg restricted to what the heads use: None (no activation) or ReLU. Returns whether there is one."""
    if act_cfg is None:
        return False
    if not isinstance(act_cfg, dict) or act_cfg.get("type") != "ReLU" or set(act_cfg) - {"type", "inplace"}:
        raise ValueError(f"act_cfg={act_cfg!r} is not supported (only None or dict(type='ReLU'))")
    return True


_DEFAULT_ORDER = ("conv", "norm", "act")


def check_only(name: str, value, accepted: Sequence) -> None:
    """ValueError naming `name` unless `value` is one of `accepted` (an mmseg/mmcv option implemented at those
    values only)."""
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not supported (only {' or '.join(repr(a) for a in accepted)})")


class ConvModule(nn.Module):
    """conv -> norm -> ReLU (in `order`), mmcv 2.1's ConvModule for the options the heads use, with its submodule
    names (`conv`, `bn`, `activate`) so mmcv checkpoints load, and its public attributes with mmcv's values:
    in_channels, out_channels, kernel_size, stride, dilation, groups (the conv's), padding (as given), transposed,
    output_padding, with_norm, with_bias, with_activation, norm_name ('bn' or None), `norm` (the norm module or
    None), order, conv_cfg, norm_cfg, act_cfg, inplace, with_spectral_norm, with_explicit_padding.

    (B, in_channels, H, W) -> (B, out_channels, H', W'). `bias='auto'` (mmcv's default) gives the conv a bias
    only when there is no norm. `norm_cfg=None` means no norm; `act_cfg=None` means no activation (then, as in mmcv,
    there is no `activate` attribute). The norm normalises out_channels, or in_channels when it comes before the
    conv in `order`. Not implemented (ValueError): spectral norm, padding modes other than 'zeros' and 'circular',
    efficient_conv_bn_eval, convs other than Conv2d, activations other than ReLU, norms other than BN / SyncBN.
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
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = dict(type="ReLU"),
        inplace: bool = True,
        with_spectral_norm: bool = False,
        padding_mode: str = "zeros",
        order: tuple = _DEFAULT_ORDER,
        efficient_conv_bn_eval: bool = False,
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
        check_conv_cfg(conv_cfg)
        if norm_cfg is not None and not isinstance(norm_cfg, dict):
            raise TypeError(f"norm_cfg must be None or a dict like dict(type='BN'), got {norm_cfg!r}")
        with_activation = check_act_cfg(act_cfg)
        check_only("with_spectral_norm", with_spectral_norm, [False])
        # mmcv's "official" padding modes are the conv's own; the others need an explicit padding layer
        check_only("padding_mode", padding_mode, ["zeros", "circular"])
        if not isinstance(order, tuple) or len(order) != 3 or set(order) != set(_DEFAULT_ORDER):
            raise ValueError(f"order={order!r} is not supported (a permutation of {_DEFAULT_ORDER})")
        check_only("efficient_conv_bn_eval", efficient_conv_bn_eval, [False])
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        self.inplace = inplace
        self.with_spectral_norm = False
        self.with_explicit_padding = False
        self.order = order
        self.with_norm = norm_cfg is not None
        self.with_activation = with_activation
        self.with_bias = (not self.with_norm) if bias == "auto" else bias
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            int_pair(kernel_size, "kernel_size", 1),
            stride=int_pair(stride, "stride", 1),
            padding=int_pair(padding, "padding", 0),
            dilation=int_pair(dilation, "dilation", 1),
            groups=groups,
            bias=self.with_bias,
            padding_mode=padding_mode,
        )
        self.in_channels, self.out_channels = self.conv.in_channels, self.conv.out_channels
        self.kernel_size, self.stride, self.dilation = self.conv.kernel_size, self.conv.stride, self.conv.dilation
        self.padding = padding  # as given, like mmcv (an int stays an int)
        self.transposed, self.output_padding, self.groups = (self.conv.transposed, self.conv.output_padding,
                                                            self.conv.groups)
        if self.with_norm:
            # mmcv names the norm after its abbreviation: 'bn' for BN and SyncBN, the only norms build_norm makes
            self.norm_name = "bn"
            norm_channels = out_channels if order.index("norm") > order.index("conv") else in_channels
            self.add_module(self.norm_name, build_norm(norm_cfg, norm_channels))
        else:
            self.norm_name = None
        if with_activation:
            self.activate = nn.ReLU(inplace=act_cfg.get("inplace", inplace))
        self.init_weights()

    @property
    def norm(self) -> Optional[nn.Module]:
        return getattr(self, self.norm_name) if self.norm_name else None

    def init_weights(self) -> None:
        """mmcv's: Kaiming normal (fan_out, relu), zero bias, norm weight 1 and bias 0."""
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if self.with_norm:
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.order:
            if layer == "conv":
                x = self.conv(x)
            elif layer == "norm" and self.with_norm:
                x = self.norm(x)
            elif layer == "act" and self.with_activation:
                x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise kxk ConvModule (groups = in_channels) then pointwise 1x1 ConvModule, each with its own norm and
    activation: mmcv's module with its names (`depthwise_conv`, `pointwise_conv`).

    dw_norm_cfg / dw_act_cfg / pw_norm_cfg / pw_act_cfg override norm_cfg / act_cfg for one of the two ('default':
    no override); other keyword arguments go to both ConvModules. (B, in_channels, H, W) -> (B, out_channels, H', W').
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
        dw_norm_cfg: Union[dict, str, None] = "default",
        dw_act_cfg: Union[dict, str, None] = "default",
        pw_norm_cfg: Union[dict, str, None] = "default",
        pw_act_cfg: Union[dict, str, None] = "default",
        **kwargs,
    ):
        super().__init__()
        if "groups" in kwargs:
            raise ValueError("groups must not be given: the depthwise conv has groups=in_channels, the pointwise 1")

        def pick(override, default):
            return default if isinstance(override, str) and override == "default" else override

        self.depthwise_conv = ConvModule(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            norm_cfg=pick(dw_norm_cfg, norm_cfg),
            act_cfg=pick(dw_act_cfg, act_cfg),
            **kwargs,
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=pick(pw_norm_cfg, norm_cfg),
                                         act_cfg=pick(pw_act_cfg, act_cfg), **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size): mmseg's `resize` in the mode the heads use (its
    warning about align_corners sizes aside)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
