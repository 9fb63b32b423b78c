"""The names that moved from resnest_fast.training to resnest_fast.segmentation still resolve, for one release,
to the very same objects, each with a DeprecationWarning that names the new place."""
import importlib
import sys

import pytest

import resnest_fast.training
from resnest_fast import segmentation
from resnest_fast.segmentation import decode_heads


@pytest.mark.parametrize("name", ["build_model", "build_segmentor", "EncoderDecoder", "load_config", "list_configs"])
def test_moved_names_warn_and_are_the_new_objects(name):
    with pytest.warns(DeprecationWarning, match=rf"resnest_fast\.segmentation\.{name}"):
        old = getattr(resnest_fast.training, name)
    assert old is getattr(segmentation, name)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'build_modle'"):
        resnest_fast.training.build_modle


@pytest.mark.parametrize("old, new", [
    ("resnest_fast.training.heads", decode_heads),
    ("resnest_fast.training.segmentor", segmentation.segmentor),
    ("resnest_fast.training.config", segmentation.config),
])
def test_moved_modules_warn_and_reexport(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.__name__.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module.__all__ and all(getattr(module, n) is getattr(new, n) for n in new.__all__)


def test_the_old_config_names_still_build_a_model():
    with pytest.warns(DeprecationWarning):
        names = resnest_fast.training.list_configs()
    assert names == segmentation.list_configs() and len(names) >= 9
