"""ASPPHead (DeepLabV3) and DepthwiseSeparableASPPHead (DeepLabV3+): one family, the separable head is the
same ASPP with depthwise-separable dilated branches plus a decoder over the first backbone feature."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from resnest_fast.segmentation.decode_heads.blocks import (ConvModule, DepthwiseSeparableConvModule, check_int,
                                                           check_ints, resize)
from resnest_fast.segmentation.decode_heads.decode_head import BaseDecodeHead

__all__ = ["ASPPModule", "DepthwiseSeparableASPPModule", "ASPPHead", "DepthwiseSeparableASPPHead"]


class ASPPModule(nn.ModuleList):
    """The parallel atrous convs of ASPP: a 1x1 ConvModule for dilation 1, else a 3x3 ConvModule with that
    dilation (padding = dilation). mmseg's arguments and attributes.

    (B, in_channels, h, w) -> list of len(dilations) tensors (B, channels, h, w).
    """

    separable = False

    def __init__(self, dilations: Sequence[int], in_channels: int, channels: int, conv_cfg: Optional[dict],
                 norm_cfg: Optional[dict], act_cfg: Optional[dict]):
        def branch(d: int) -> nn.Module:
            if d == 1:
                return ConvModule(in_channels, channels, 1, **cfgs)
            block = DepthwiseSeparableConvModule if self.separable else ConvModule
            return block(in_channels, channels, 3, padding=d, dilation=d, **cfgs)

        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        super().__init__(branch(d) for d in dilations)
        self.dilations, self.in_channels, self.channels = dilations, in_channels, channels
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg

    def forward(self, x: Tensor) -> List[Tensor]:
        return [branch(x) for branch in self]


class DepthwiseSeparableASPPModule(ASPPModule):
    """ASPPModule whose dilated branches are DepthwiseSeparableConvModules (DeepLabV3+), as in mmseg."""

    separable = True


class ASPPHead(BaseDecodeHead):
    """DeepLabV3 head: `bottleneck` 3x3 ConvModule over concat(image pool, ASPP branches in dilations order);
    the image pool is global avg-pool -> 1x1 ConvModule -> bilinear resize back (`image_pool.1` in keys).

    feats[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w). mmseg's default dilations are
    (1, 6, 12, 18); its ResNeSt configs use (1, 12, 24, 36).
    """

    _aspp_module = ASPPModule

    def __init__(self, in_channels: int, channels: int, *, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs):
        super().__init__(in_channels, channels, **kwargs)
        self.dilations = check_ints("dilations", dilations, 1)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), self._conv(in_channels, channels, 1))
        self.aspp_modules = self._aspp_module(self.dilations, in_channels, channels, **self.conv_kwargs)
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

    _aspp_module = DepthwiseSeparableASPPModule

    def __init__(self, in_channels: int, channels: int, *, c1_in_channels: int, c1_channels: int, **kwargs):
        super().__init__(in_channels, channels, **kwargs)
        self.c1_in_channels = check_int("c1_in_channels", c1_in_channels, 0)
        self.c1_channels = check_int("c1_channels", c1_channels, 0)
        if c1_in_channels > 0 and c1_channels == 0:
            raise ValueError("c1_channels must be >= 1 when c1_in_channels > 0")
        if c1_in_channels == 0 and c1_channels != 0:
            raise ValueError(f"c1_channels must be 0 when c1_in_channels is 0 (no skip branch), got {c1_channels}")
        self.c1_bottleneck = self._conv(c1_in_channels, c1_channels, 1) if c1_in_channels > 0 else None
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + c1_channels, channels, 3, padding=1, norm_cfg=self.norm_cfg,
                                         act_cfg=self.act_cfg),
            DepthwiseSeparableConvModule(channels, channels, 3, padding=1, norm_cfg=self.norm_cfg,
                                         act_cfg=self.act_cfg),
        )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        out = self._aspp(self._transform_inputs(feats))
        if self.c1_bottleneck is not None:
            c1 = self.c1_bottleneck(self._feature(feats, 0, self.c1_in_channels, "c1 index"))
            out = torch.cat([resize(out, c1.shape[2:], self.align_corners), c1], dim=1)
        return self.cls_seg(self.sep_bottleneck(out))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c1_in_channels={self.c1_in_channels}, c1_channels={self.c1_channels}"
