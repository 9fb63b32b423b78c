"""BaseDecodeHead: what mmseg's decode heads share (input selection, Dropout2d, the 1x1 classifier `conv_seg`,
the loss). Initialisation is mmseg's after `init_weights()`: convs Kaiming-normal (fan_out, relu) with zero bias,
norms weight 1 / bias 0, `conv_seg` normal(0, 0.01) with zero bias."""
from typing import Optional, Sequence

from torch import Tensor, nn

from resnest_fast.segmentation.decode_heads.blocks import ConvModule, check_int, resize
from resnest_fast.segmentation.decode_heads.losses import acc_seg, build_loss, check_labels

__all__ = ["BaseDecodeHead"]


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
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.channels = check_int("channels", channels, 1)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.in_index = check_int("in_index", in_index)
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
        self.ignore_index = check_int("ignore_index", ignore_index)
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
