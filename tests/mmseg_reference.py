"""pytest's face of resnest_fast.testing.mmseg_reference: the same imports, skipping (with the install command)
where mmseg is not installed, unless RESNEST_FAST_REQUIRE_MMSEG=1 (test.sh, which installs mmseg) makes a missing
reference a failure."""
import os

import pytest

from resnest_fast.testing.mmseg_reference import (INSTALL_HINT, MmsegUnavailable, import_mmseg as _import,
                                                  install_mmcv_ops_standin, mmseg_available)

__all__ = ["INSTALL_HINT", "install_mmcv_ops_standin", "mmseg_available", "import_mmseg", "import_mmseg_resnest",
           "skip_without_mmseg"]


REQUIRING = ("RESNEST_FAST_REQUIRE_MMSEG",)


def skip_without_mmseg() -> None:
    if not mmseg_available():
        required = [name for name in REQUIRING if os.environ.get(name) == "1"]
        if required:
            pytest.fail(f"{required[0]}=1 but {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)


def import_mmseg(module: str = "mmseg"):
    """The mmseg (or mmcv / mmengine) module named `module`, or pytest.skip with the install command."""
    skip_without_mmseg()
    try:
        return _import(module)
    except MmsegUnavailable as exc:  # pragma: no cover - mmseg_available() said yes
        pytest.skip(str(exc))


def import_mmseg_resnest():
    """mmseg.models.backbones.resnest, or pytest.skip with the install command."""
    return import_mmseg("mmseg.models.backbones.resnest")
