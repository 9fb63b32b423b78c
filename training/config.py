"""Deprecated: moved to resnest_fast.segmentation.config; re-exported here, with a DeprecationWarning, for one
release."""
import warnings

from resnest_fast.segmentation.config import *  # noqa: F401,F403
from resnest_fast.segmentation.config import __all__  # noqa: F401

warnings.warn("resnest_fast.training.config moved to resnest_fast.segmentation.config; the old module goes away in the "
              "next release", DeprecationWarning, stacklevel=2)
