"""timm's own source as a test reference, without torchvision.

timm is installed from source only (`pip install --no-deps timm`): its package __init__ imports torchvision
(FrozenBatchNorm2d, transforms, FX feature extraction), which would pull another torch. `timm_layer` loads single
files of timm/layers (no package __init__ runs); `timm_package` imports the whole package once with an inert
torchvision stand-in (only names, nothing in it runs), for timm's own models, then takes timm and the stand-in
back out of sys.modules so no other test sees either."""
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest

__all__ = ["timm_layer", "timm_package"]


def _timm_root() -> str:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    return spec.submodule_search_locations[0]


def timm_layer(name: str) -> types.ModuleType:
    """timm/layers/<name>.py (and the helpers it imports), loaded without importing timm's package __init__."""
    root = _timm_root()
    saved = {k: sys.modules.get(k) for k in ("timm", "timm.layers", "timm.layers.helpers", f"timm.layers.{name}")}
    try:
        for pkg in ("timm", "timm.layers"):
            mod = types.ModuleType(pkg)
            mod.__path__ = [root if pkg == "timm" else f"{root}/layers"]
            sys.modules[pkg] = mod
        for part in dict.fromkeys(("helpers", name)):
            s = importlib.util.spec_from_file_location(f"timm.layers.{part}", f"{root}/layers/{part}.py")
            module = importlib.util.module_from_spec(s)
            sys.modules[f"timm.layers.{part}"] = module
            s.loader.exec_module(module)
        return sys.modules[f"timm.layers.{name}"]
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Names(type):
    """Any attribute of a stand-in class is another (distinct, hashable) stand-in class."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Names(name, (cls,), {})
        setattr(cls, name, sub)
        return sub


class _StandIn(metaclass=_Names):
    def __init__(self, *args, **kwargs):
        pass


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Names(name, (_StandIn,), {})
        setattr(self, name, sub)
        return sub


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandInModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


@functools.lru_cache(maxsize=None)
def timm_package() -> types.ModuleType:
    """The real timm package (e.g. `timm_package().create_model("resnest50d")`), imported once per session."""
    _timm_root()
    if "timm" in sys.modules and hasattr(sys.modules["timm"], "create_model"):
        return sys.modules["timm"]
    before = set(sys.modules)
    finder = None if importlib.util.find_spec("torchvision") else _TorchvisionStandIn()
    if finder is not None:
        sys.meta_path.insert(0, finder)
    try:
        import timm
        import timm.models.resnest  # registers the resnest factories
        return timm
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            for k in set(sys.modules) - before:
                if k.split(".")[0] in ("timm", "torchvision"):
                    del sys.modules[k]
