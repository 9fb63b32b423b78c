"""Deprecated: moved to resnest_fast.segmentation.segmentor; re-exported here, with a DeprecationWarning, for one
release."""
import warnings

from resnest_fast.segmentation.segmentor import *  # noqa: F401,F403
from resnest_fast.segmentation.segmentor import __all__  # noqa: F401

warnings.warn("resnest_fast.training.segmentor moved to resnest_fast.segmentation.segmentor; the old module goes away in the "
              "next release", DeprecationWarning, stacklevel=2)
