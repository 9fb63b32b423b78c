"""Config files: Python files of plain dicts, with mmseg's `_base_` inheritance, without mmengine.

A config file assigns top-level names (`model = dict(...)`, `crop_size = (512, 1024)`, ...). `_base_` (a path or a
list of paths, relative to the file) names files loaded first; the file's own values are merged into theirs:
dicts recursively, anything else replaced; a dict with `_delete_=True` replaces instead of merging. Names that
start with `_` and imported modules are not part of the config.

The configs shipped with the package (resnest_fast/segmentation/configs/resnest/, mmseg's file names) are found by name:
`load_config("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024")`.

Two schemas are read. This project's (`model`, `data`, `schedule`, `runtime`) is what every consumer sees. mmseg
1.x's own files (`train_dataloader`, `optim_wrapper`, `param_scheduler`, `train_cfg`, `default_hooks`, ...; the
ones installed with mmsegmentation, `.mim/configs/resnest/*.py`) are translated into it once, here
(segmentation.mmseg_config), after the `--cfg-options` overrides, which therefore name mmseg's keys for an mmseg
file, as with mmseg's own tools. The translation is also where mmseg's `bgr_to_rgb` is read (see mmseg_config).
"""
import ast
import copy
import difflib
import os
import pathlib
import runpy
import types
from typing import List, Sequence, Union

from resnest_fast.segmentation.mmseg_config import from_mmseg_config, is_mmseg_config

__all__ = ["CONFIG_DIR", "load_config", "resolve_config", "apply_cfg_options", "list_configs", "merge"]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
# the top-level sections of this project's schema (what training reads besides the config's own entries)
SECTIONS = ("model", "data", "schedule", "runtime")


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
        # the table's names are long and not uniform (mmseg spells PSPNet's `cityscapes512x1024`): name the nearest
        near = difflib.get_close_matches(stem, list_configs(), n=1, cutoff=0.9)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown config {str(name_or_path)!r}: {hint}pass a .py file or one of {list_configs()}")
    return matches[0]


def _load_file(path: pathlib.Path, chain: tuple) -> dict:
    if path in chain:
        raise ValueError(f"config {path} inherits from itself through {[str(p) for p in chain]}")
    text = path.read_text(encoding="utf-8", errors="replace")
    for marker, what in (("{{_base_.", "mmengine's {{_base_.x}} substitution"),
                         ("read_base(", "mmengine's read_base() (pure-Python) config style")):
        if marker in text:
            raise ValueError(f"config {path}: {what} is not supported: write the values out, or inherit with "
                             "`_base_ = [...]` and merged dicts")
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


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string


def apply_cfg_options(cfg: dict, options: Sequence[str]) -> dict:
    """A copy of cfg with `key.sub=value` overrides (mmengine's --cfg-options): value is a Python literal (1, 0.5,
    (512, 512), None, 'SyncBN') or else taken as a string; missing dicts on the way are created; an integer part
    indexes a list (`train_dataloader.dataset.pipeline.3.crop_size=(64, 64)`, mmengine's allow_list_keys). The
    first part must name one of the config's entries or a section of this project's schema (SECTIONS): a new
    top-level name would be read by nothing."""
    cfg = copy.deepcopy(cfg)
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--cfg-options takes key.sub=value, got {option!r}")
        node = cfg
        parts = key.split(".")
        if parts[0] not in cfg and parts[0] not in SECTIONS:
            known = sorted(set(SECTIONS) | {k for k in cfg if isinstance(k, str) and not k.startswith("_")})
            close = difflib.get_close_matches(parts[0], known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the config's entries: {', '.join(known)}"
            raise ValueError(f"--cfg-options {option!r}: the config has no entry {parts[0]!r} ({hint})")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[:i])
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    raise ValueError(f"--cfg-options {option!r}: {where} is a list of {len(node)} items, "
                                     f"{part!r} is not an index of it")
                part = int(part)
            elif not isinstance(node, dict):
                raise ValueError(f"--cfg-options {option!r}: {where} is a {type(node).__name__}, not a dict")
            if last:
                node[part] = _parse_value(text)
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return cfg


def _runtime_defaults() -> dict:
    return _load_file(CONFIG_DIR / "_base_" / "default_runtime.py", ())["runtime"]


def resolve_config(config: Union[str, os.PathLike, dict], cfg_options: Sequence[str] = ()) -> dict:
    """A config in this project's schema: a shipped config's name, a .py file (ours or mmseg's) or a dict (ours,
    or mmseg's as loaded from its files), with `cfg_options` (`key.sub=value`) applied before mmseg's schema is
    translated. A dict in this project's schema and without options comes back as it is (not copied)."""
    if not isinstance(config, (dict, str, os.PathLike)):
        raise TypeError(f"config must be a shipped config's name, a .py file or a config dict, got {config!r}")
    if not isinstance(config, dict):
        return load_config(config, cfg_options)
    cfg = apply_cfg_options(config, cfg_options) if cfg_options else config
    if is_mmseg_config(cfg):
        cfg = from_mmseg_config(cfg, _runtime_defaults())
    return cfg


def load_config(name_or_path: Union[str, os.PathLike], cfg_options: Sequence[str] = ()) -> dict:
    """The config as a dict of plain Python values in this project's schema (mmseg's files translated, see the
    module docstring); `cfg['filename']` is the file it came from and `cfg['name']` its stem (the name logs and
    work directories use). cfg_options: `key.sub=value` overrides, applied to the file's own keys."""
    path = _resolve(name_or_path)
    cfg = apply_cfg_options(_load_file(path, ()), cfg_options)
    cfg["filename"] = str(path)
    cfg["name"] = path.stem
    return resolve_config(cfg)
