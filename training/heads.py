"""Decode heads of mmsegmentation's ResNeSt table, without mmseg or mmcv at runtime.

FCNHead (FCN, and the auxiliary head of all four models), PSPHead (PSPNet), ASPPHead (DeepLabV3) and
DepthwiseSeparableASPPHead (DeepLabV3+), as mmseg 1.2.2 defines them: same submodule names and shapes, so the
`decode_head.*` / `auxiliary_head.*` part of an mmseg checkpoint loads with strict=True, and the same forward
maths (bilinear resizes with the head's align_corners, the same concat orders). The training loss is mmseg's
CrossEntropyLoss with its defaults, whose mean divides by *all* label pixels, ignored ones included
(avg_non_ignore=False), not by the valid ones as torch's cross_entropy does; `acc_seg` is the accuracy mmseg logs.

The heads run unfused in ATen: they are a small part of a ResNeSt-101 segmenter's time and memory next to the
backbone, whose split-attention blocks are the fused part of this project.

Initialisation is mmseg's after `segmentor.init_weights()`: convs Kaiming-normal (fan_out, relu) with zero bias,
norms weight 1 / bias 0, the classifier `conv_seg` normal(0, 0.01) with zero bias.
"""
import inspect
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnest_fast.nn.split_attention import build_norm

__all__ = [
    "HEADS",
    "ConvModule",
    "DepthwiseSeparableConvModule",
    "CrossEntropyLoss",
    "cross_entropy",
    "acc_seg",
    "resize",
    "BaseDecodeHead",
    "FCNHead",
    "PPM",
    "PSPHead",
    "ASPPModule",
    "ASPPHead",
    "DepthwiseSeparableASPPHead",
    "build_loss",
    "build_head",
]

IntPair = Union[int, Tuple[int, int]]
_EPS = torch.finfo(torch.float32).eps  # mmseg's guard in its mean and its accuracy


# ----------------------------------------------------------------------------------------------------------------
# argument checks (errors name the argument)


def _check_int(name: str, value, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_int_pair(name: str, value, minimum: int) -> IntPair:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(_check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))
    return _check_int(name, value, minimum)


def _check_ints(name: str, values, minimum: int) -> Tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or len(values) == 0:
        raise TypeError(f"{name} must be a non-empty tuple or list of ints, got {values!r}")
    return tuple(_check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def _check_act_cfg(act_cfg: Optional[dict]) -> bool:
    """mmcv's act_cfg restricted to what the heads use: None (no activation) or ReLU."""
    if act_cfg is None:
        return False
    if not isinstance(act_cfg, dict) or act_cfg.get("type") != "ReLU" or set(act_cfg) - {"type", "inplace"}:
        raise ValueError(f"act_cfg must be None or dict(type='ReLU'), got {act_cfg!r}")
    return True


# ----------------------------------------------------------------------------------------------------------------
# building blocks (mmcv.cnn's, with its submodule names)


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
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if bias != "auto" and not isinstance(bias, bool):
            raise ValueError(f"bias must be True, False or 'auto', got {bias!r}")
        with_norm = norm_cfg is not None
        with_act = _check_act_cfg(act_cfg)
        if bias == "auto":
            bias = not with_norm
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            _check_int_pair("kernel_size", kernel_size, 1),
            stride=_check_int_pair("stride", stride, 1),
            padding=_check_int_pair("padding", padding, 0),
            dilation=_check_int_pair("dilation", dilation, 1),
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


# ----------------------------------------------------------------------------------------------------------------
# loss and accuracy


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = 255,
    class_weight: Optional[Tensor] = None,
    avg_non_ignore: bool = False,
) -> Tensor:
    """mmseg's softmax cross-entropy with reduction 'mean' (loss_weight not applied).

    logits (B, K, H, W) float, labels (B, H, W) int64 at the same size. Pixels labelled `ignore_index` add 0 to
    the sum. The denominator is mmseg's, plus float32 eps:
      - avg_non_ignore=False (mmseg's default): the number of *all* pixels, ignored ones included, so the loss
        shrinks with the ignored fraction (torch's own mean divides by the valid pixels only);
      - avg_non_ignore=True: the number of non-ignored pixels;
      - with class_weight (K,) (only with avg_non_ignore=True, see CrossEntropyLoss): the sum of the weights of
        the non-ignored pixels' classes, i.e. torch's weighted mean.
    Returns a 0-dim tensor.
    """
    loss = F.cross_entropy(logits, labels, weight=class_weight, reduction="none", ignore_index=ignore_index)
    valid = labels != ignore_index
    if class_weight is not None:
        if not avg_non_ignore:
            raise ValueError("class_weight needs avg_non_ignore=True (see CrossEntropyLoss)")
        avg_factor = class_weight[labels[valid]].sum()
    elif avg_non_ignore:
        avg_factor = valid.sum()  # a tensor, so no host sync; the division rounds it as mmseg's Python int
    else:
        avg_factor = labels.numel()
    return loss.sum() / (avg_factor + _EPS)


class CrossEntropyLoss(nn.Module):
    """mmseg's CrossEntropyLoss (softmax, reduction 'mean'): `loss_weight * cross_entropy(...)`.

    forward(logits (B, K, H, W), labels (B, H, W) int64, ignore_index) -> 0-dim tensor. It holds no state, so
    mmseg state_dicts are unchanged by it. Unsupported mmseg options (use_sigmoid, use_mask, reduction other
    than 'mean', class weights from a file) raise ValueError naming the option.

    class_weight needs avg_non_ignore=True: mmseg 1.2.2 computes the denominator of the weighted mean as
    `class_weight[label]` over all pixels, which raises IndexError as soon as one pixel holds an ignore_index
    outside the classes (255), with either avg_non_ignore. With no ignored pixel the two settings agree; with
    avg_non_ignore=True this module computes what mmseg means (the weights of the non-ignored pixels).
    """

    def __init__(
        self,
        use_sigmoid: bool = False,
        use_mask: bool = False,
        reduction: str = "mean",
        class_weight: Optional[Sequence[float]] = None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_ce",
        avg_non_ignore: bool = False,
    ):
        super().__init__()
        if use_sigmoid is not False:
            raise ValueError(f"loss_decode use_sigmoid={use_sigmoid!r} is not supported (softmax only)")
        if use_mask is not False:
            raise ValueError(f"loss_decode use_mask={use_mask!r} is not supported")
        if reduction != "mean":
            raise ValueError(f"loss_decode reduction must be 'mean', got {reduction!r}")
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise TypeError(f"loss_decode loss_weight must be a number, got {loss_weight!r}")
        if not isinstance(loss_name, str) or not loss_name.startswith("loss_"):
            raise ValueError(f"loss_decode loss_name must be a str starting with 'loss_', got {loss_name!r}")
        if not isinstance(avg_non_ignore, bool):
            raise TypeError(f"loss_decode avg_non_ignore must be a bool, got {avg_non_ignore!r}")
        if class_weight is not None:
            if not isinstance(class_weight, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in class_weight
            ):
                raise TypeError(
                    f"loss_decode class_weight must be a list of numbers (files are not read), got {class_weight!r}"
                )
            if not avg_non_ignore:
                raise ValueError(
                    "loss_decode class_weight needs avg_non_ignore=True: with avg_non_ignore=False mmseg 1.2.2 "
                    "raises IndexError whenever a label equals ignore_index (255 is not a class); the two "
                    "settings agree when no pixel is ignored"
                )
            class_weight = tuple(float(w) for w in class_weight)
        self.class_weight: Optional[Tuple[float, ...]] = class_weight
        self.loss_weight = float(loss_weight)
        self.loss_name = loss_name
        self.avg_non_ignore = avg_non_ignore

    def forward(self, logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
        class_weight = None
        if self.class_weight is not None:
            if len(self.class_weight) != logits.shape[1]:
                raise ValueError(
                    f"loss_decode class_weight has {len(self.class_weight)} entries for {logits.shape[1]} classes"
                )
            class_weight = logits.new_tensor(self.class_weight)
        return self.loss_weight * cross_entropy(
            logits, labels, ignore_index=ignore_index, class_weight=class_weight, avg_non_ignore=self.avg_non_ignore
        )

    def extra_repr(self) -> str:
        s = f"loss_weight={self.loss_weight}, avg_non_ignore={self.avg_non_ignore}, loss_name={self.loss_name!r}"
        if self.class_weight is not None:
            s += f", class_weight=<{len(self.class_weight)} values>"
        return s


def build_loss(cfg: dict) -> CrossEntropyLoss:
    """mmseg's `loss_decode` dict -> CrossEntropyLoss; other types and unknown keys raise ValueError."""
    if not isinstance(cfg, dict):
        raise TypeError(
            f"loss_decode must be a dict like dict(type='CrossEntropyLoss'), got {type(cfg).__name__} "
            "(lists of losses are not supported)"
        )
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind != "CrossEntropyLoss":
        raise ValueError(f"loss_decode['type'] must be 'CrossEntropyLoss', got {kind!r}")
    allowed = set(inspect.signature(CrossEntropyLoss).parameters)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"loss_decode has unknown keys {unknown}; supported: {sorted(allowed)}")
    return CrossEntropyLoss(**cfg)


def _check_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, num_classes, h, w), got shape {tuple(logits.shape)}")
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be (B, H, W) with B = {logits.shape[0]} as in logits, got shape {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device}, logits on {logits.device}")


@torch.no_grad()
def acc_seg(
    logits: Tensor, labels: Tensor, *, ignore_index: Optional[int] = 255, align_corners: bool = False
) -> Tensor:
    """The `acc_seg` mmseg logs in training: percentage of non-ignored pixels whose argmax class is the label.

    logits (B, K, h, w), resized bilinearly to the labels' (H, W) with `align_corners` as the head's loss does;
    labels (B, H, W) int64. Returns a (1,) tensor in percent, with mmseg's eps guards:
    100 * (correct + eps) / (valid + eps), so a batch with no valid pixel gives 100.
    """
    _check_labels(logits, labels)
    if logits.shape[2:] != labels.shape[1:]:
        logits = resize(logits, labels.shape[1:], align_corners)
    pred = logits.topk(1, dim=1).indices.squeeze(1)  # topk, not argmax: mmseg's tie-breaking
    correct = pred == labels
    if ignore_index is not None:
        valid = labels != ignore_index
        correct = correct[valid]
        total = int(valid.sum())
    else:
        total = labels.numel()
    return (correct.sum().float().reshape(1) + _EPS).mul_(100.0 / (total + _EPS))


# ----------------------------------------------------------------------------------------------------------------
# heads


class BaseDecodeHead(nn.Module):
    """What mmseg's decode heads share: the input selection, Dropout2d and the 1x1 classifier `conv_seg`, and the
    loss. Subclasses implement `forward(feats) -> logits`.

    feats: tuple of backbone features (B, C_i, H_i, W_i); the head reads `feats[in_index]` (in_channels
    channels). forward returns logits (B, num_classes, h, w) at that feature's resolution (DeepLabV3+: at
    feats[0]'s). `loss(logits, labels)` resizes the logits to the labels as mmseg does and applies
    `loss_decode` (mmseg's CrossEntropyLoss config; see `cross_entropy` for its denominator).
    norm_cfg None means convs with bias and no norm, as in mmseg.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        num_classes: int,
        in_index: int = -1,
        dropout_ratio: float = 0.1,
        norm_cfg: Optional[dict] = dict(type="BN"),
        align_corners: bool = False,
        loss_decode: dict = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ignore_index: int = 255,
    ):
        super().__init__()
        self.in_channels = _check_int("in_channels", in_channels, 1)
        self.channels = _check_int("channels", channels, 1)
        self.num_classes = _check_int("num_classes", num_classes, 1)
        self.in_index = _check_int("in_index", in_index)
        if isinstance(dropout_ratio, bool) or not isinstance(dropout_ratio, (int, float)):
            raise TypeError(f"dropout_ratio must be a number, got {dropout_ratio!r}")
        if not 0 <= dropout_ratio < 1:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio}")
        if norm_cfg is not None and not isinstance(norm_cfg, dict):
            raise TypeError(f"norm_cfg must be None or a dict like dict(type='BN'), got {norm_cfg!r}")
        if not isinstance(align_corners, bool):
            raise TypeError(f"align_corners must be a bool, got {align_corners!r}")
        self.dropout_ratio = float(dropout_ratio)
        self.norm_cfg = None if norm_cfg is None else dict(norm_cfg)
        self.align_corners = align_corners
        self.ignore_index = _check_int("ignore_index", ignore_index)
        self.loss_decode = build_loss(loss_decode)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def _conv(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> ConvModule:
        return ConvModule(in_channels, out_channels, kernel_size, norm_cfg=self.norm_cfg, **kwargs)

    def _feature(self, feats: Sequence[Tensor], index: int, channels: int, name: str) -> Tensor:
        if not isinstance(feats, (tuple, list)):
            raise TypeError(f"feats must be a tuple or list of (B, C, H, W) tensors, got {type(feats).__name__}")
        if not -len(feats) <= index < len(feats):
            raise IndexError(f"{name}={index} is out of range for {len(feats)} features")
        x = feats[index]
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"feats[{name}={index}] must be (B, {channels}, H, W), got {shape}")
        return x

    def _transform_inputs(self, feats: Sequence[Tensor]) -> Tensor:
        return self._feature(feats, self.in_index, self.in_channels, "in_index")

    def cls_seg(self, feat: Tensor) -> Tensor:
        """(B, channels, h, w) -> (B, num_classes, h, w): Dropout2d (training only), then the 1x1 classifier."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (B, num_classes, h, w) from forward, labels (B, H, W) int64 -> 0-dim loss, mmseg's
        `loss_by_feat(...)['loss_ce']`: bilinear resize of the logits to (H, W) with the head's align_corners,
        then loss_decode with the head's ignore_index."""
        _check_labels(logits, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have num_classes={self.num_classes} channels, got {logits.shape[1]}")
        logits = resize(logits, labels.shape[1:], self.align_corners)
        return self.loss_decode(logits, labels, ignore_index=self.ignore_index)

    def acc_seg(self, logits: Tensor, labels: Tensor) -> Tensor:
        """`acc_seg(logits, labels)` with the head's ignore_index and align_corners."""
        return acc_seg(logits, labels, ignore_index=self.ignore_index, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, channels={self.channels}, num_classes={self.num_classes}, "
            f"in_index={self.in_index}, ignore_index={self.ignore_index}, align_corners={self.align_corners}"
        )


class FCNHead(BaseDecodeHead):
    """FCN head: `num_convs` kxk ConvModules (dilated), optionally `conv_cat` over concat(input, convs output).

    feats[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w). num_convs=0 requires
    in_channels == channels. mmseg's auxiliary head is FCNHead(num_convs=1, concat_input=False, in_index=2).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dilation: int = 1,
        **kwargs,
    ):
        super().__init__(in_channels, channels, **kwargs)
        self.num_convs = _check_int("num_convs", num_convs, 0)
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that the convs keep the size, got {kernel_size}")
        _check_int("dilation", dilation, 1)
        if not isinstance(concat_input, bool):
            raise TypeError(f"concat_input must be a bool, got {concat_input!r}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"num_convs=0 needs in_channels == channels, got {in_channels} and {channels}")
        self.concat_input = concat_input
        padding = (kernel_size // 2) * dilation
        if num_convs == 0:
            self.convs = nn.Identity()
        else:
            self.convs = nn.Sequential(
                *[
                    self._conv(in_channels if i == 0 else channels, channels, kernel_size, padding=padding,
                               dilation=dilation)
                    for i in range(num_convs)
                ]
            )
        if concat_input:  # mmseg's conv_cat is never dilated
            self.conv_cat = self._conv(in_channels + channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = self._transform_inputs(feats)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


class PPM(nn.ModuleList):
    """Pyramid pooling: for each scale s, adaptive avg-pool to s x s -> 1x1 ConvModule -> bilinear resize back.

    (B, in_channels, h, w) -> list of len(pool_scales) tensors (B, channels, h, w). Submodule i is
    Sequential(AdaptiveAvgPool2d(s), ConvModule) as in mmseg (keys `i.1.conv`, `i.1.bn`).
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, norm_cfg: Optional[dict],
                 align_corners: bool):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg))
            for s in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> List[Tensor]:
        return [resize(branch(x), x.shape[2:], self.align_corners) for branch in self]


class PSPHead(BaseDecodeHead):
    """PSPNet head: `bottleneck` 3x3 ConvModule over concat(x, PPM branches in pool_scales order).

    feats[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, channels: int, *, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        super().__init__(in_channels, channels, **kwargs)
        self.pool_scales = _check_ints("pool_scales", pool_scales, 1)
        self.psp_modules = PPM(self.pool_scales, in_channels, channels, self.norm_cfg, self.align_corners)
        self.bottleneck = self._conv(in_channels + len(self.pool_scales) * channels, channels, 3, padding=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = self._transform_inputs(feats)
        out = self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))
        return self.cls_seg(out)


class ASPPModule(nn.ModuleList):
    """The parallel atrous convs of ASPP: a 1x1 ConvModule for dilation 1, else a 3x3 ConvModule with that
    dilation (padding = dilation), or with `separable` a DepthwiseSeparableConvModule (mmseg's
    DepthwiseSeparableASPPModule).

    (B, in_channels, h, w) -> list of len(dilations) tensors (B, channels, h, w).
    """

    def __init__(self, dilations: Sequence[int], in_channels: int, channels: int, norm_cfg: Optional[dict],
                 separable: bool = False):
        def branch(d: int) -> nn.Module:
            if d == 1:
                return ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg)
            block = DepthwiseSeparableConvModule if separable else ConvModule
            return block(in_channels, channels, 3, padding=d, dilation=d, norm_cfg=norm_cfg)

        super().__init__(branch(d) for d in dilations)

    def forward(self, x: Tensor) -> List[Tensor]:
        return [branch(x) for branch in self]


class ASPPHead(BaseDecodeHead):
    """DeepLabV3 head: `bottleneck` 3x3 ConvModule over concat(image pool, ASPP branches in dilations order);
    the image pool is global avg-pool -> 1x1 ConvModule -> bilinear resize back (`image_pool.1` in keys).

    feats[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w). mmseg's default dilations are
    (1, 6, 12, 18); its ResNeSt configs use (1, 12, 24, 36).
    """

    _separable = False

    def __init__(self, in_channels: int, channels: int, *, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs):
        super().__init__(in_channels, channels, **kwargs)
        self.dilations = _check_ints("dilations", dilations, 1)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), self._conv(in_channels, channels, 1))
        self.aspp_modules = ASPPModule(self.dilations, in_channels, channels, self.norm_cfg, self._separable)
        self.bottleneck = self._conv((len(self.dilations) + 1) * channels, channels, 3, padding=1)

    def _aspp(self, x: Tensor) -> Tensor:
        pooled = resize(self.image_pool(x), x.shape[2:], self.align_corners)
        return self.bottleneck(torch.cat([pooled, *self.aspp_modules(x)], dim=1))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self._aspp(self._transform_inputs(feats)))


class DepthwiseSeparableASPPHead(ASPPHead):
    """DeepLabV3+ head: ASPP with depthwise-separable dilated branches, then a decoder that resizes the ASPP
    output to feats[0] (always the first feature, as in mmseg, whatever in_index is), concatenates it with
    `c1_bottleneck`(feats[0]) (1x1 ConvModule to c1_channels), and applies `sep_bottleneck` (two 3x3
    DepthwiseSeparableConvModules).

    feats[in_index] (B, in_channels, h, w) and feats[0] (B, c1_in_channels, H1, W1) -> logits
    (B, num_classes, H1, W1). c1_in_channels=0 skips the decoder's skip branch (then c1_channels must be 0).
    """

    _separable = True

    def __init__(self, in_channels: int, channels: int, *, c1_in_channels: int, c1_channels: int, **kwargs):
        super().__init__(in_channels, channels, **kwargs)
        self.c1_in_channels = _check_int("c1_in_channels", c1_in_channels, 0)
        self.c1_channels = _check_int("c1_channels", c1_channels, 0)
        if c1_in_channels > 0 and c1_channels == 0:
            raise ValueError("c1_channels must be >= 1 when c1_in_channels > 0")
        if c1_in_channels == 0 and c1_channels != 0:
            raise ValueError(f"c1_channels must be 0 when c1_in_channels is 0 (no skip branch), got {c1_channels}")
        self.c1_bottleneck = self._conv(c1_in_channels, c1_channels, 1) if c1_in_channels > 0 else None
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + c1_channels, channels, 3, padding=1, norm_cfg=self.norm_cfg),
            DepthwiseSeparableConvModule(channels, channels, 3, padding=1, norm_cfg=self.norm_cfg),
        )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        out = self._aspp(self._transform_inputs(feats))
        if self.c1_bottleneck is not None:
            c1 = self.c1_bottleneck(self._feature(feats, 0, self.c1_in_channels, "c1 index"))
            out = torch.cat([resize(out, c1.shape[2:], self.align_corners), c1], dim=1)
        return self.cls_seg(self.sep_bottleneck(out))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c1_in_channels={self.c1_in_channels}, c1_channels={self.c1_channels}"


# ----------------------------------------------------------------------------------------------------------------
# config

HEADS: Dict[str, type] = {
    "FCNHead": FCNHead,
    "PSPHead": PSPHead,
    "ASPPHead": ASPPHead,
    "DepthwiseSeparableASPPHead": DepthwiseSeparableASPPHead,
}

# mmseg BaseDecodeHead arguments these heads do not implement: accepted only at the value that changes nothing.
_MMSEG_DEFAULT_ONLY = {
    "conv_cfg": [None],
    "act_cfg": [dict(type="ReLU"), dict(type="ReLU", inplace=True), dict(type="ReLU", inplace=False)],
    "input_transform": [None],
    "sampler": [None],
    "threshold": [None],
    "init_cfg": [None, dict(type="Normal", std=0.01, override=dict(name="conv_seg"))],
}


def _head_arguments(cls: type) -> Tuple[set, set]:
    """(all, required) keyword arguments of a head class and of the BaseDecodeHead classes it extends."""
    names, required = set(), set()
    for klass in cls.__mro__:
        if not issubclass(klass, BaseDecodeHead):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
                continue
            names.add(p.name)
            if p.default is p.empty:
                required.add(p.name)
    return names, required


def build_head(cfg: dict) -> BaseDecodeHead:
    """A head from mmseg's config dict (`model.decode_head` / `model.auxiliary_head`), e.g.
    dict(type='PSPHead', in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6), dropout_ratio=0.1,
    num_classes=19, norm_cfg=dict(type='SyncBN', requires_grad=True), align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)).

    `type` is one of HEADS. Unknown keys raise ValueError naming them; mmseg options that are not implemented
    (conv_cfg, act_cfg, input_transform, sampler, threshold, init_cfg, out_channels) are accepted only at the
    value that leaves the head unchanged, and raise ValueError otherwise.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict with a 'type' key, got {type(cfg).__name__}")
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in HEADS:
        raise ValueError(f"cfg['type'] must be one of {sorted(HEADS)}, got {kind!r}")
    cls = HEADS[kind]
    for key, accepted in _MMSEG_DEFAULT_ONLY.items():
        if key in cfg:
            value = cfg.pop(key)
            if value not in accepted:
                only = " or ".join(repr(a) for a in accepted)
                raise ValueError(f"{kind}: {key}={value!r} is not supported (only {only})")
    if "out_channels" in cfg:
        out_channels = cfg.pop("out_channels")
        if out_channels is not None and out_channels != cfg.get("num_classes"):
            raise ValueError(
                f"{kind}: out_channels={out_channels!r} is not supported (only None or num_classes; binary "
                "segmentation with one output channel is not implemented)"
            )
    allowed, required = _head_arguments(cls)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{kind} got unknown config keys {unknown}; it accepts {sorted(allowed)}")
    missing = sorted(required - set(cfg))
    if missing:
        raise ValueError(f"{kind} config is missing {missing}")
    return cls(**cfg)
