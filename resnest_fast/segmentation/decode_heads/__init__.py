"""Decode heads of mmsegmentation's ResNeSt table, without mmseg or mmcv at runtime.

FCNHead (FCN, and the auxiliary head of all four models), PSPHead (PSPNet), ASPPHead (DeepLabV3) and
DepthwiseSeparableASPPHead (DeepLabV3+), as mmseg 1.2.2 defines them: same submodule names and shapes, so the
`decode_head.*` / `auxiliary_head.*` part of an mmseg checkpoint loads with strict=True, and the same forward
maths (bilinear resizes with the head's align_corners, the same concat orders). They run unfused in ATen: a
small part of a ResNeSt-101 segmenter's time and memory next to the backbone's fused split-attention blocks.
"""
from resnest_fast.segmentation.decode_heads.aspp_head import (ASPPHead, ASPPModule, DepthwiseSeparableASPPHead,
                                                              DepthwiseSeparableASPPModule)
from resnest_fast.segmentation.decode_heads.blocks import ConvModule, DepthwiseSeparableConvModule, resize
from resnest_fast.segmentation.decode_heads.builder import HEADS, build_head
from resnest_fast.segmentation.decode_heads.decode_head import BaseDecodeHead
from resnest_fast.segmentation.decode_heads.fcn_head import FCNHead
from resnest_fast.segmentation.decode_heads.losses import CrossEntropyLoss, acc_seg, build_loss, cross_entropy
from resnest_fast.segmentation.decode_heads.psp_head import PPM, PSPHead

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
    "DepthwiseSeparableASPPModule",
    "ASPPHead",
    "DepthwiseSeparableASPPHead",
    "build_loss",
    "build_head",
]
