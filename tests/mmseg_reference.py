"""Imports the real mmsegmentation (the independent reference of the parity tests) on a CPU machine.

mmcv-lite has no compiled ops, but mmseg imports `mmcv.ops` at import time (for point_sample, pure Python, and
sigmoid_focal_loss, compiled). A stand-in `mmcv.ops` exposing the pure-Python point_sample, raising for compiled
ops and ModuleNotFoundError for any other name (which mmseg already catches) makes it import; none of the
modules used here touch mmcv.ops. Tests skip with the reason when mmseg is not installed.
"""
import importlib
import importlib.util
import sys
import types

import pytest

INSTALL_HINT = (
    "mmsegmentation is not installed: pip install 'torch==2.13.0+cpu' mmengine==0.10.7 mmcv-lite==2.1.0 "
    "mmsegmentation==1.2.2 ftfy regex"
)


def _install_mmcv_ops_standin():
    if "mmcv.ops" in sys.modules:
        return
    import mmcv

    try:
        importlib.import_module("mmcv.ops")  # a full mmcv build has the real thing
        return
    except Exception:
        sys.modules.pop("mmcv.ops", None)
    stand_in = types.ModuleType("mmcv.ops")

    def point_sample(input, points, align_corners=False, **kwargs):
        import torch.nn.functional as F

        add_dim = points.dim() == 3
        if add_dim:
            points = points.unsqueeze(2)
        out = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
        return out.squeeze(3) if add_dim else out

    def _compiled(name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} needs compiled mmcv ops, which mmcv-lite does not have")

        return fail

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("sigmoid_focal_loss", "SigmoidFocalLoss"):
            return _compiled(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} is not available in mmcv-lite")

    stand_in.point_sample = point_sample
    stand_in.sigmoid_focal_loss = _compiled("sigmoid_focal_loss")
    stand_in.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = stand_in
    mmcv.ops = stand_in


def mmseg_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mmseg", "mmcv", "mmengine"))


def import_mmseg(module: str = "mmseg"):
    """The mmseg (or mmcv / mmengine) module named `module`, e.g. "mmseg.models.decode_heads", imported with
    the mmcv.ops stand-in; pytest.skip with the install command when mmseg is not installed."""
    if not mmseg_available():
        pytest.skip(INSTALL_HINT)
    _install_mmcv_ops_standin()
    return importlib.import_module(module)


def import_mmseg_resnest():
    """mmseg.models.backbones.resnest, or pytest.skip with the install command."""
    return import_mmseg("mmseg.models.backbones.resnest")
