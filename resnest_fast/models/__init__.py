"""ResNeSt backbones (mmseg's arguments and state_dict names), their named factories, and ImageNet weights for them
from OpenMMLab's, the ResNeSt release's and timm's checkpoints (load_pretrained)."""
from resnest_fast.models import factory
from resnest_fast.models.factory import (
    create_backbone,
    default_cfgs,
    list_backbones,
    resnest50,
    resnest50_d8,
    resnest101,
    resnest101_d8,
    resnest152,
    resnest152_d8,
    resnest200,
    resnest200_d8,
    resnest269,
    resnest269_d8,
)
from resnest_fast.models.pretrained import PretrainedReport, PretrainedUnavailable, load_pretrained
from resnest_fast.models.resnest import Bottleneck, ResLayer, ResNeSt

__all__ = ["ResNeSt", "Bottleneck", "ResLayer", "load_pretrained", "PretrainedReport",
           "PretrainedUnavailable"] + factory.__all__
