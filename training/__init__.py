"""resnest_fast.training: training and evaluating the segmentation models of resnest_fast.segmentation.

The loop (`train`: mmseg's schedule, DDP under torchrun, checkpoints and exact resume), evaluation over a dataset
(`evaluate`: mIoU, whole/slide, multi-scale + flip TTA), checkpoint files, data (datasets, mmseg's pipelines,
samplers, the Cityscapes converter), the schedule and the distributed helpers. The commands that call them live in
resnest_fast.cli.

The model-building names that used to live here (`build_model`, `build_segmentor`, `EncoderDecoder`,
`load_config`, `list_configs`) moved to resnest_fast.segmentation; they still resolve here, with a
DeprecationWarning, for one release.
"""
import warnings

__all__ = []

_MOVED = ("build_model", "build_segmentor", "EncoderDecoder", "load_config", "list_configs")  # to segmentation


def __getattr__(name):
    if name in _MOVED:
        from resnest_fast import segmentation

        warnings.warn(f"resnest_fast.training.{name} moved to resnest_fast.segmentation.{name}; the old name goes "
                      "away in the next release", DeprecationWarning, stacklevel=2)
        return getattr(segmentation, name)
    raise AttributeError(f"module 'resnest_fast.training' has no attribute {name!r}")
