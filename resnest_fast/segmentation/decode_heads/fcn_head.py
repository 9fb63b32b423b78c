"""FCNHead: mmseg's FCN head, also the auxiliary head of all four ResNeSt models."""
from typing import Sequence

import torch
from torch import Tensor, nn

from resnest_fast.segmentation.decode_heads.blocks import check_int
from resnest_fast.segmentation.decode_heads.decode_head import BaseDecodeHead

__all__ = ["FCNHead"]


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
        self.num_convs = check_int("num_convs", num_convs, 0)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that the convs keep the size, got {kernel_size}")
        check_int("dilation", dilation, 1)
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
