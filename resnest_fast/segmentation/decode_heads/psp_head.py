"""PSPHead: mmseg's PSPNet head (pyramid pooling module + bottleneck)."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from resnest_fast.segmentation.decode_heads.blocks import ConvModule, check_ints, resize
from resnest_fast.segmentation.decode_heads.decode_head import BaseDecodeHead

__all__ = ["PPM", "PSPHead"]


class PPM(nn.ModuleList):
    """Pyramid pooling: for each scale s, adaptive avg-pool to s x s -> 1x1 ConvModule -> bilinear resize back.

    mmseg's arguments and attributes. (B, in_channels, h, w) -> list of len(pool_scales) tensors
    (B, channels, h, w). Submodule i is Sequential(AdaptiveAvgPool2d(s), ConvModule) as in mmseg (keys `i.1.conv`,
    and `i.1.bn` with a norm).
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, conv_cfg: Optional[dict],
                 norm_cfg: Optional[dict], act_cfg: Optional[dict], align_corners: bool):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1, conv_cfg=conv_cfg,
                                                              norm_cfg=norm_cfg, act_cfg=act_cfg))
            for s in pool_scales
        )
        self.pool_scales, self.align_corners = pool_scales, align_corners
        self.in_channels, self.channels = in_channels, channels
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg

    def forward(self, x: Tensor) -> List[Tensor]:
        return [resize(branch(x), x.shape[2:], self.align_corners) for branch in self]


class PSPHead(BaseDecodeHead):
    """PSPNet head: `bottleneck` 3x3 ConvModule over concat(x, PPM branches in pool_scales order).

    feats[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, channels: int, *, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        super().__init__(in_channels, channels, **kwargs)
        self.pool_scales = check_ints("pool_scales", pool_scales, 1)
        self.psp_modules = PPM(self.pool_scales, in_channels, channels, align_corners=self.align_corners,
                               **self.conv_kwargs)
        self.bottleneck = self._conv(in_channels + len(self.pool_scales) * channels, channels, 3, padding=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = self._transform_inputs(feats)
        out = self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))
        return self.cls_seg(out)
