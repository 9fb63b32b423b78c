"""Deprecated: moved to resnest_fast.segmentation.decode_heads; re-exported here, with a DeprecationWarning, for one
release."""
import warnings

from resnest_fast.segmentation.decode_heads import *  # noqa: F401,F403
from resnest_fast.segmentation.decode_heads import __all__  # noqa: F401

warnings.warn("resnest_fast.training.heads moved to resnest_fast.segmentation.decode_heads; the old module goes away in the "
              "next release", DeprecationWarning, stacklevel=2)
