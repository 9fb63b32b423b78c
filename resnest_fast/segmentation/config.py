"""Config files: Python files of plain dicts, with mmseg's `_base_` inheritance, without mmengine.

A config file assigns top-level names (`model = dict(...)`, `crop_size = (512, 1024)`, ...). `_base_` (a path or a
list of paths, relative to the file) names files loaded first; the file's own values are merged into theirs:
dicts recursively, anything else replaced; a dict with `_delete_=True` replaces instead of merging. Names that
start with `_` and imported modules are not part of the config.

The configs shipped with the package (resnest_fast/segmentation/configs/resnest/, mmseg's file names) are found by name:
`load_config("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024")`.
"""
import copy
import os
import pathlib
import runpy
import types
from typing import List, Union

__all__ = ["CONFIG_DIR", "load_config", "list_configs", "merge"]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def merge(base: dict, update: dict) -> dict:
    """`update` merged into a copy of `base` (mmengine's rule: nested dicts merge, `_delete_=True` replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not delete and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
                continue
        out[key] = copy.deepcopy(value)
    return out


def list_configs() -> List[str]:
    """Names of the shipped configs (without the .py)."""
    return sorted(p.stem for p in CONFIG_DIR.rglob("*.py") if "_base_" not in p.parts)


def _resolve(name_or_path: Union[str, os.PathLike]) -> pathlib.Path:
    path = pathlib.Path(name_or_path)
    if path.is_file():
        return path.resolve()
    if path.parent != pathlib.Path("."):
        raise FileNotFoundError(f"config file {str(name_or_path)!r} does not exist")
    stem = path.name[:-3] if path.name.endswith(".py") else path.name
    matches = [p for p in CONFIG_DIR.rglob(f"{stem}.py") if "_base_" not in p.parts]
    if not matches:
        raise ValueError(f"unknown config {str(name_or_path)!r}: pass a .py file or one of {list_configs()}")
    return matches[0]


def _load_file(path: pathlib.Path, chain: tuple) -> dict:
    if path in chain:
        raise ValueError(f"config {path} inherits from itself through {[str(p) for p in chain]}")
    try:
        values = runpy.run_path(str(path))
    except Exception as exc:
        raise ValueError(f"config {path} could not be executed: {type(exc).__name__}: {exc}") from exc
    bases = values.get("_base_", [])
    if isinstance(bases, (str, os.PathLike)):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise FileNotFoundError(f"config {path}: _base_ file {base!r} does not exist ({base_path})")
        merged = merge(merged, _load_file(base_path, chain + (path,)))
    own = {
        k: v
        for k, v in values.items()
        if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }
    return merge(merged, own)


def load_config(name_or_path: Union[str, os.PathLike]) -> dict:
    """The config as a dict of plain Python values; `cfg['filename']` is the file it came from and
    `cfg['name']` its stem (the name logs and work directories use)."""
    path = _resolve(name_or_path)
    cfg = _load_file(path, ())
    cfg["filename"] = str(path)
    cfg["name"] = path.stem
    return cfg
