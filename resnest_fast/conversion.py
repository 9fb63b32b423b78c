"""`convert(model)`: the drop-in path for people who keep their mmseg / mmdet / timm model.

Every split-attention module of the model — mmseg's and mmdet's `SplitAttentionConv2d`, timm's `SplitAttn` — is
replaced, in place, by resnest_fast's fused `SplitAttentionConv2d`. The replacement takes over the original's
own submodules (`conv`, `bn0`, `fc1`, `bn1`, `fc2`: the same objects, so the weights, their `requires_grad`, an
optimizer holding them and the state_dict keys all stay as they were) and computes the same maths with the fused
ops. Modules whose variant the fused path does not compute (deformable conv, no BN, a norm with its own
activation or dropout such as timm's BatchNormAct2d with SiLU, an activation other than ReLU, DropBlock, a padding
mode other than zeros) are left as they are, with a warning naming them.
"""
import warnings
from typing import Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_fast.nn.split_attention import SplitAttentionConv2d
from resnest_fast.nn.sync_batchnorm import SyncBatchNorm

# BatchNorm's forward and the SyncBatchNorms' (torch's and ours): the classes whose forward is only the norm
_PLAIN_NORM_FORWARDS = {_BatchNorm.forward, nn.SyncBatchNorm.forward, SyncBatchNorm.forward}

__all__ = ["convert", "from_module"]

_SOURCES = {
    ("mmseg", "SplitAttentionConv2d"),
    ("mmdet", "SplitAttentionConv2d"),
    ("mmpretrain", "SplitAttentionConv2d"),
    ("timm", "SplitAttn"),
}


def _is_split_attention(module: nn.Module) -> bool:
    cls = type(module)
    if isinstance(module, SplitAttentionConv2d):
        return False
    return (cls.__module__.split(".")[0], cls.__name__) in _SOURCES


def _more_than_batch_norm(bn: _BatchNorm) -> Optional[str]:
    """Why a BatchNorm subclass computes more than BatchNorm, which the fused ops would silently drop; None when it
    does not. A subclass keeping BatchNorm's forward (nn.BatchNorm2d, the SyncBatchNorms, mmengine's _BatchNormXd)
    is plain. timm's BatchNormAct2d applies its own dropout and activation after the norm: with no dropout and a
    ReLU or no activation it is the same maths here, since the block's ReLU follows both bn0 and bn1
    (relu(relu(v)) = relu(v)); anything else is not."""
    if type(bn).forward in _PLAIN_NORM_FORWARDS:
        return None
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if not (hasattr(bn, "act") or hasattr(bn, "drop")):
        return "with its own forward"
    if drop is not None and not isinstance(drop, nn.Identity):
        return f"with dropout ({type(drop).__name__})"
    if act is not None and not isinstance(act, (nn.Identity, nn.ReLU)):
        return f"with a {type(act).__name__} activation, not ReLU"
    return None


def _why_not(m: nn.Module) -> Optional[str]:
    """None if the fused module computes `m`'s maths, else the reason it does not."""
    conv = getattr(m, "conv", None)
    if getattr(m, "with_dcn", False) or type(conv) is not nn.Conv2d:
        return f"its conv is a {type(conv).__name__} (deformable or custom convs are not fused)"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"its conv pads with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
    for name in ("bn0", "bn1"):
        if not isinstance(getattr(m, name, None), _BatchNorm):
            return f"{name} is a {type(getattr(m, name, None)).__name__}, not a BatchNorm"
        reason = _more_than_batch_norm(getattr(m, name))
        if reason:
            return f"{name} is a {type(getattr(m, name)).__name__} {reason}"
    for name in ("act0", "act1", "relu"):
        act = getattr(m, name, None)
        if act is not None and not isinstance(act, nn.ReLU):
            return f"{name} is a {type(act).__name__}, not ReLU"
    drop = getattr(m, "drop", None)
    if drop is not None and not isinstance(drop, nn.Identity):
        return f"drop is a {type(drop).__name__} (DropBlock is not fused)"
    if not all(isinstance(getattr(m, n, None), nn.Conv2d) for n in ("fc1", "fc2")):
        return "fc1/fc2 are not 1x1 Conv2d"
    return None


def from_module(src: nn.Module, backend: Optional[str] = None) -> SplitAttentionConv2d:
    """A fused SplitAttentionConv2d computing what `src` (mmseg/mmdet SplitAttentionConv2d or timm SplitAttn)
    computes, built around `src`'s own conv/bn0/fc1/bn1/fc2 modules. Raises ValueError if it cannot."""
    reason = _why_not(src)
    if reason is not None:
        raise ValueError(f"cannot fuse this {type(src).__name__}: {reason}")
    conv = src.conv
    radix = int(src.radix)
    groups = conv.groups // radix
    out = SplitAttentionConv2d(
        conv.in_channels, conv.out_channels // radix, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=groups, radix=radix, inter_channels=src.fc1.out_channels, backend=backend,
    )
    out.conv, out.bn0, out.fc1, out.bn1, out.fc2 = src.conv, src.bn0, src.fc1, src.bn1, src.fc2
    out.train(src.training)
    return out


def convert(model: nn.Module, backend: Optional[str] = None, verbose: bool = False) -> int:
    """Replaces, in place, every mmseg/mmdet/timm split-attention module inside `model` by the fused one; returns
    how many were replaced. Weights are kept (the same parameter objects). `backend` is given to the new modules
    (None: the default backend). Unsupported variants stay unfused, with a warning that names them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if _is_split_attention(model):
        raise ValueError(
            "model is itself a split-attention module and cannot be replaced in place: use "
            "resnest_fast.conversion.from_module(model) to get its fused equivalent"
        )
    replaced, skipped = 0, []  # type: int, List[Tuple[str, str]]
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not _is_split_attention(child):
                continue
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            reason = _why_not(child)
            if reason is not None:
                skipped.append((path, reason))
                continue
            setattr(parent, child_name, from_module(child, backend=backend))
            replaced += 1
            if verbose:
                print(f"resnest_fast.convert: {path}: {type(child).__name__} -> fused SplitAttentionConv2d")
    if skipped:
        shown = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"resnest_fast.convert left {len(skipped)} module(s) unfused: {shown}{more}", UserWarning,
                      stacklevel=2)
    return replaced
