"""mmsegmentation plugin: the fused ResNeSt backbone as `type='ResNeStFast'` in mmseg's MODELS registry.

An mmseg config switches to the fused kernels with one line (plus the import that registers the type):

    custom_imports = dict(imports=["resnest_fast.mmseg"], allow_failed_imports=False)
    model = dict(backbone=dict(type="ResNeStFast"))   # over any of mmseg's configs/resnest/*.py

`ResNeStFast` takes mmseg's `ResNeSt` arguments and has its state_dict keys (an mmseg checkpoint loads with
strict=True); underneath is resnest_fast.models.ResNeSt, whose split-attention blocks run the fused ops. What
mmseg's `ResNeSt` adds on top of a module is kept:
- it is an mmengine `BaseModule` with mmseg's `init_cfg`: `pretrained=<path>` becomes
  `init_cfg=dict(type='Pretrained', checkpoint=path)` (with mmseg's deprecation warning; both at once is an error),
  no `init_cfg` means mmseg's default `[Kaiming for Conv2d, Constant 1 for norm layers]`, and `init_weights()` is
  mmengine's, so `dict(type='Pretrained', checkpoint=..., prefix=...)` loads through mmengine's `load_checkpoint`
  exactly as for mmseg's backbone. mmseg 1.2.2's ResNeSt never applies its `zero_init_residual` (ResNet looks for
  its own Bottleneck class, and ResNeSt's is a subclass), so after `init_weights()` every bn3 starts at 1 here too,
  as in resnest_fast.models.ResNeSt by default.
- norm layers come from mmcv's `build_norm_layer(norm_cfg)`: 'SyncBN' is mmengine's subclass of torch's
  `nn.SyncBatchNorm`, so mmengine's Runner reverts it to BatchNorm on one process and DistributedDataParallel
  treats it as it treats mmseg's.
- train()/eval(), `frozen_stages` and `norm_eval` follow mmseg's rules (resnest_fast.models.ResNeSt already does).

Only the backbone is registered. The decode heads of the ResNeSt table (FCN, PSP, ASPP, depthwise-separable ASPP)
have no fused kernels in this project: resnest_fast.segmentation's heads are mmseg's maths in plain ATen, so
registering them would give an mmseg user a second copy of the heads mmseg already builds, and nothing faster.

Importing `resnest_fast` never imports this module (nor mmseg); this module needs mmsegmentation, mmcv and mmengine.
"""
import copy
import warnings

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_fast.models import ResNeSt

try:
    from mmcv.cnn import build_norm_layer
    from mmengine.model import BaseModule
    from mmseg.registry import MODELS
except ImportError as exc:
    raise ImportError(
        "resnest_fast.mmseg registers the fused backbone in mmsegmentation's MODELS registry and needs "
        f"mmsegmentation, mmcv and mmengine ({exc}): pip install mmengine mmcv mmsegmentation"
    ) from exc

__all__ = ["ResNeStFast"]


def _mmcv_norm_layers(module: nn.Module, norm_cfg: dict) -> nn.Module:
    """`module` with every norm layer whose class differs from what mmcv's build_norm_layer(norm_cfg) builds
    (resnest_fast.nn.SyncBatchNorm for 'SyncBN') replaced by mmcv's, holding the same state and mode."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            new = build_norm_layer(norm_cfg, child.num_features)[1]
            if type(new) is not type(child):
                new.load_state_dict(child.state_dict())
                setattr(module, name, new.train(child.training))
        else:
            _mmcv_norm_layers(child, norm_cfg)
    return module


# mmseg's ResNet init_cfg when neither pretrained nor init_cfg is given
DEFAULT_INIT_CFG = [dict(type="Kaiming", layer="Conv2d"),
                    dict(type="Constant", val=1, layer=["_BatchNorm", "GroupNorm"])]


@MODELS.register_module()
class ResNeStFast(ResNeSt, BaseModule):
    """mmseg's `ResNeSt` backbone (same arguments, state_dict and train/eval rules) on the fused kernels.

    Args: those of mmseg's `ResNeSt` (see resnest_fast.models.ResNeSt for each), by keyword as mmseg's registry
    passes them (mmseg's positional order is not ours), plus `backend`, the backend of the fused split-attention
    ops (None: the default). `pretrained` (a path or URL mmengine reads) and `init_cfg`
    (mmengine init configs; mmseg's default when None) are applied by `init_weights()`, mmengine's.
    Input (B, in_channels, H, W) -> tuple of the stages of `out_indices`, as mmseg's.
    """

    def __init__(self, depth: int, *, pretrained=None, init_cfg=None, **kwargs):
        if init_cfg and pretrained:
            raise ValueError("ResNeStFast: init_cfg and pretrained cannot be set at the same time (give init_cfg)")
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f"ResNeStFast: pretrained must be a str or None, got {type(pretrained).__name__}")
        super().__init__(depth, **kwargs)
        if pretrained is not None:
            warnings.warn('DeprecationWarning: pretrained is a deprecated, please use "init_cfg" instead')
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.pretrained = pretrained
        self.init_cfg = copy.deepcopy(DEFAULT_INIT_CFG if init_cfg is None else init_cfg)
        _mmcv_norm_layers(self, self.norm_cfg)
        self._freeze_stages()  # the new layers of frozen stages: eval mode, parameters without gradient

    def init_weights(self) -> None:
        """mmengine's BaseModule.init_weights with this module's init_cfg (Pretrained loads through mmengine)."""
        if self.init_cfg is None:
            # ResNeSt.__init__ initialises the new layers, before init_cfg is set: mmengine's version would mark
            # the module initialised there and skip the real call (the Runner's) with its checkpoint
            ResNeSt.init_weights(self)
            return
        BaseModule.init_weights(self)
