"""The real mmsegmentation, the independent reference of the parity tests and benchmarks, on a CPU machine.

mmcv-lite has no compiled ops, but mmseg imports `mmcv.ops` at import time (for point_sample, pure Python, and
sigmoid_focal_loss, compiled). A stand-in `mmcv.ops` exposing the pure-Python point_sample, raising for compiled
ops and ModuleNotFoundError for any other name (which mmseg already catches) makes it import; none of the
modules used here touch mmcv.ops.
"""
import copy
import importlib
import importlib.util
import sys
import types
import warnings

__all__ = ["INSTALL_HINT", "MmsegUnavailable", "mmseg_available", "install_mmcv_ops_standin", "import_mmseg",
           "build_mmseg_segmentor"]

INSTALL_HINT = (
    "mmsegmentation is not installed: pip install 'torch==2.13.0+cpu' mmengine==0.10.7 mmcv-lite==2.1.0 "
    "mmsegmentation==1.2.2 ftfy regex"
)


class MmsegUnavailable(ImportError):
    """mmsegmentation (or mmcv / mmengine) is not installed; the message says how to install it."""


def mmseg_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mmseg", "mmcv", "mmengine"))


def install_mmcv_ops_standin() -> None:
    """Puts the stand-in `mmcv.ops` in sys.modules (once), unless mmcv has real compiled ops."""
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


def import_mmseg(module: str = "mmseg"):
    """The mmseg (or mmcv / mmengine) module named `module`, e.g. "mmseg.models.decode_heads", imported with
    the mmcv.ops stand-in; MmsegUnavailable (with the install command) when mmseg is not installed."""
    if not mmseg_available():
        raise MmsegUnavailable(INSTALL_HINT)
    install_mmcv_ops_standin()
    return importlib.import_module(module)


def build_mmseg_segmentor(model_cfg: dict):
    """mmseg's own segmentor for one of our `model` config dicts (same names and values as mmseg's configs),
    with BN instead of SyncBN (one process) and mmseg's BGR input convention; MmsegUnavailable without mmseg."""
    import_mmseg("mmseg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmengine.config import ConfigDict
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules

        register_all_modules()
        cfg = copy.deepcopy(model_cfg)
        cfg["backbone"]["norm_cfg"] = dict(type="BN", requires_grad=True)
        for head in ("decode_head", "auxiliary_head"):
            if cfg.get(head) is not None:
                cfg[head]["norm_cfg"] = dict(type="BN", requires_grad=True)
        cfg["data_preprocessor"]["bgr_to_rgb"] = True
        # mmseg's EncoderDecoder writes `backbone.pretrained = pretrained` by attribute, which a plain dict refuses
        # (the configs name the ImageNet weights); building never loads them (that is init_weights)
        return MODELS.build(ConfigDict(cfg))
