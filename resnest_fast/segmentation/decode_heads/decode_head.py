"""BaseDecodeHead: what mmseg's decode heads share (input selection, Dropout2d, the 1x1 classifier `conv_seg`,
the loss). Initialisation is mmseg's after `init_weights()`: convs Kaiming-normal (fan_out, relu) with zero bias,
norms weight 1 / bias 0, `conv_seg` normal(0, 0.01) with zero bias."""
from typing import Optional, Sequence

from torch import Tensor, nn

from resnest_fast.nn import check_conv_cfg
from resnest_fast.segmentation.decode_heads.blocks import (ConvModule, check_act_cfg, check_int, check_only,
                                                           resize)
from resnest_fast.segmentation.decode_heads.losses import acc_seg, build_loss, check_labels

__all__ = ["BaseDecodeHead"]


_INIT_CFGS = (None, dict(type="Normal", std=0.01, override=dict(name="conv_seg")))


class BaseDecodeHead(nn.Module):
    """What mmseg's decode heads share: the input selection, Dropout2d and the 1x1 classifier `conv_seg`, and the
    loss. Subclasses implement `forward(feats) -> logits`.

    mmseg 1.2.2's arguments, defaults and attributes. feats: tuple of backbone features (B, C_i, H_i, W_i); the head
    reads `feats[in_index]` (in_channels channels). forward returns logits (B, num_classes, h, w) at that feature's
    resolution (DeepLabV3+: at feats[0]'s). `loss(logits, labels)` resizes the logits to the labels as mmseg does
    and applies `loss_decode` (mmseg's CrossEntropyLoss config; see `cross_entropy` for its denominator).
    norm_cfg None (mmseg's default) means convs with bias and no norm; the configs set dict(type='SyncBN').
    conv_cfg (None or Conv2d) and act_cfg (None or ReLU) go to every ConvModule.

    Not implemented (ValueError naming the argument): input_transform other than None, out_channels other than
    None / num_classes (binary segmentation with one channel), samplers, init_cfg other than mmseg's default or
    None (conv_seg is always initialised normal(0, 0.01) with zero bias). `threshold` is kept but, as in mmseg
    with out_channels > 1, unused.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        num_classes: int,
        out_channels: Optional[int] = None,
        threshold: Optional[float] = None,
        dropout_ratio: float = 0.1,
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = dict(type="ReLU"),
        in_index: int = -1,
        input_transform: Optional[str] = None,
        loss_decode: dict = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ignore_index: int = 255,
        sampler: Optional[dict] = None,
        align_corners: bool = False,
        init_cfg: Optional[dict] = dict(type="Normal", std=0.01, override=dict(name="conv_seg")),
    ):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.channels = check_int("channels", channels, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        if out_channels is not None and out_channels != num_classes:
            raise ValueError(
                f"out_channels={out_channels!r} is not supported (only None or num_classes={num_classes}; binary "
                "segmentation with one output channel is not implemented)"
            )
        self.out_channels = num_classes
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise TypeError(f"threshold must be None or a number, got {threshold!r}")
        self.threshold = threshold
        self.in_index = check_int("in_index", in_index)
        check_only("input_transform", input_transform, [None])  # one input feature
        check_only("sampler", sampler, [None])
        check_only("init_cfg", init_cfg, _INIT_CFGS)
        self.input_transform, self.sampler, self.init_cfg = input_transform, sampler, init_cfg
        if isinstance(dropout_ratio, bool) or not isinstance(dropout_ratio, (int, float)):
            raise TypeError(f"dropout_ratio must be a number, got {dropout_ratio!r}")
        if not 0 <= dropout_ratio < 1:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio}")
        check_conv_cfg(conv_cfg)
        if norm_cfg is not None and not isinstance(norm_cfg, dict):
            raise TypeError(f"norm_cfg must be None or a dict like dict(type='BN'), got {norm_cfg!r}")
        check_act_cfg(act_cfg)
        if not isinstance(align_corners, bool):
            raise TypeError(f"align_corners must be a bool, got {align_corners!r}")
        self.dropout_ratio = float(dropout_ratio)
        self.conv_cfg = None if conv_cfg is None else dict(conv_cfg)
        self.norm_cfg = None if norm_cfg is None else dict(norm_cfg)
        self.act_cfg = None if act_cfg is None else dict(act_cfg)
        self.align_corners = align_corners
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.loss_decode = build_loss(loss_decode)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    @property
    def conv_kwargs(self) -> dict:
        """conv_cfg, norm_cfg and act_cfg as every ConvModule of the head takes them."""
        return dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def _conv(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> ConvModule:
        return ConvModule(in_channels, out_channels, kernel_size, **self.conv_kwargs, **kwargs)

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
        check_labels(logits, labels)
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
