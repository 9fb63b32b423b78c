"""ResNeSt backbones (mmseg's arguments and state_dict names) and their named factories."""
from resnest_fast.models import factory as _factory
from resnest_fast.models.factory import create_backbone, default_cfgs, list_backbones
from resnest_fast.models.resnest import Bottleneck, ResLayer, ResNeSt

__all__ = ["ResNeSt", "Bottleneck", "ResLayer", "default_cfgs", "create_backbone", "list_backbones"]
for _name in _factory.default_cfgs:
    globals()[_name] = getattr(_factory, _name)
    __all__.append(_name)
