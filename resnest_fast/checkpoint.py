"""Loading mmseg (and this project's) checkpoints into a model, safely and with a readable report.

`load_checkpoint(model, path)` accepts what mmseg saves (`{'meta': ..., 'state_dict': ..., 'optimizer': ...}`, from
mmseg 0.x or mmengine), a bare state_dict, and DDP's `module.` prefix. Everything is read with
`torch.load(weights_only=True)`: no code in the file runs. mmengine's training state holds objects of classes
that are not tensors (its `HistoryBuffer`, numpy arrays in `message_hub`); each such class is replaced by an inert
placeholder that runs nothing, since only `state_dict` is used. The keys, shapes and dtypes (a cast other than
float to float would change the values) are compared with the model's *before* anything is copied, so a wrong
checkpoint raises `CheckpointError` with the differences grouped by module and leaves the model untouched; so
does one whose weights hold NaN or infinite values.
Nothing is ever written to the checkpoint's path.
"""
import collections
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "LoadReport", "load_checkpoint", "read_state_dict", "check_state_dict", "check_finite",
           "compare_state_dicts", "strip_module_prefix", "torch_load"]


class CheckpointError(ValueError):
    """The file is not a readable checkpoint, holds no state_dict, or its state_dict does not fit the model."""


class _Opaque:
    """Stands for an object of a class the checkpoint names but that is not needed to read its state_dict."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<not loaded: {type(self).__module__}.{type(self).__name__}>"


def _placeholders(path: str) -> List[Tuple[type, str]]:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        out.append((type(attr or name, (_Opaque,), {"__module__": module or "builtins"}), name))
    return out


def torch_load(path: str, map_location) -> object:
    """torch.load with weights_only=True of a file that must exist and be a checkpoint; errors name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a file")
    _check_format(path)
    protocol = _pickle_protocol(path)
    # torch's weights-only reader warns, in two lines on stderr, about any pickle protocol but 2 (what torch.save
    # writes) and then fails on the instructions it lacks: the error says it instead, in its one line
    hint = "" if protocol in (None, 2) else (
        f" (the file is pickled with protocol {protocol}, and torch's weights-only reader lacks some of its "
        "instructions: torch.save writes protocol 2 unless told otherwise)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            first = exc  # classes outside the weights-only allowlist: read again with inert placeholders
        except Exception as exc:  # a corrupt file gets whatever error its unpickler's opcode met (KeyError, ...)
            raise CheckpointError(
                f"{path!r} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(exc).__name__}: "
                f"{exc}{hint}") from exc
        if not zipfile.is_zipfile(path):  # a plain pickle: the placeholders need the list of torch's zip format
            raise CheckpointError(f"{path!r} could not be read as a weights-only checkpoint: "
                                  f"{_unpickler_reason(first)}{hint}") from first
        try:
            with torch.serialization.safe_globals(_placeholders(path)):
                return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            reason = _unpickler_reason(exc) if isinstance(exc, pickle.UnpicklingError) else \
                f"{type(exc).__name__}: {exc}"
            raise CheckpointError(f"{path!r} could not be read as a weights-only checkpoint: {reason}{hint}") from exc


def _unpickler_reason(exc: BaseException) -> str:
    """What torch's weights-only reader could not read (e.g. 'Unsupported operand 149'), without the paragraphs
    around it, whose advice is to load with weights_only=False, i.e. to run the file's code."""
    text = str(exc)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _pickle_protocol(path: str) -> Optional[int]:
    """The pickle protocol of the file (a plain pickle) or of its data.pkl (torch's zip format); None if unknown."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
                if data is None:
                    return None
                with archive.open(data) as f:
                    head = f.read(2)
        else:
            with open(path, "rb") as f:
                head = f.read(2)
    except (OSError, zipfile.BadZipFile):
        return None
    return head[1] if len(head) == 2 and head[0] == pickle.PROTO[0] else None


def _check_format(path: str) -> None:
    """CheckpointError unless the file starts like what torch.save writes: a zip archive, or (the legacy format)
    a pickle, whose first byte is the PROTO opcode. A text file would otherwise reach the unpickler, whose error
    names a byte of the text (`KeyError: '101'`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {exc.strerror or exc}") from exc
    if head.startswith((b"PK", b"\x80")):
        return
    what = "an empty file" if not head else f"a file starting with {head!r}"
    raise CheckpointError(f"{path!r} is not a PyTorch checkpoint: expected what torch.save writes (a zip archive or "
                          f"a pickle), got {what}")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _describe(obj) -> str:
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {list(obj.shape)}"
    if isinstance(obj, (str, bytes)):
        return f"a {type(obj).__name__} ({obj[:40]!r})"
    return f"a {type(obj).__name__}"


def check_state_dict(sd, path: str) -> Mapping[str, Tensor]:
    """`sd` if it is a non-empty dict of str -> Tensor, else CheckpointError saying what `path` holds instead."""
    if not _is_state_dict(sd):
        what = _describe(sd)
        if isinstance(sd, Mapping):
            bad = [k for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, Tensor))][:3]
            what = f"a dict whose entries {bad} are not tensors" if sd else "an empty dict"
        raise CheckpointError(
            f"{path!r} holds no state_dict: expected a dict of tensors, or a dict with a 'state_dict' entry "
            f"(as mmseg saves), got {what}"
        )
    return sd


def read_state_dict(path: Union[str, os.PathLike], map_location="cpu") -> Tuple[Dict[str, Tensor], dict]:
    """(state_dict, meta) from a checkpoint file: mmseg's {'meta', 'state_dict', ...} or a bare state_dict, with
    DDP's `module.` prefix removed. Raises CheckpointError when the file holds no state_dict."""
    path = os.fspath(path)
    obj = torch_load(path, map_location)
    meta = {}
    if isinstance(obj, Mapping) and "state_dict" in obj:
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        sd = obj["model"]
    else:
        sd = obj
    return strip_module_prefix(check_state_dict(sd, path)), meta


def strip_module_prefix(sd: Mapping[str, Tensor]) -> "collections.OrderedDict[str, Tensor]":
    """An ordered copy of `sd` without DDP's `module.` prefix when every key has it."""
    if sd and all(k.startswith("module.") for k in sd):
        return collections.OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return collections.OrderedDict(sd)


@dataclass
class LoadReport:
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint, model shape)
    meta: dict = field(default_factory=dict)
    # (key, checkpoint dtype, model dtype): a cast other than float -> float would change the values (int32 weights
    # copied into float parameters are whole numbers; float statistics into an int buffer are truncated)
    dtype_mismatched: List[Tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.dtype_mismatched)

    @property
    def skipped(self) -> set:
        """Keys in both the model and the checkpoint that a non-strict load leaves alone (shape or dtype)."""
        return {k for k, _, _ in self.mismatched} | {k for k, _, _ in self.dtype_mismatched}

    def __str__(self) -> str:
        if self.ok:
            return "all keys matched"
        parts = []
        if self.missing:
            parts.append(f"missing from the checkpoint ({len(self.missing)}): {_grouped(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model ({len(self.unexpected)}): {_grouped(self.unexpected)}")
        if self.mismatched:
            shown = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:8])
            more = f"; and {len(self.mismatched) - 8} more" if len(self.mismatched) > 8 else ""
            parts.append(f"shape mismatches ({len(self.mismatched)}): {shown}{more}")
        if self.dtype_mismatched:
            shown = "; ".join(f"{k}: checkpoint {str(a).replace('torch.', '')} vs model {str(b).replace('torch.', '')}"
                              for k, a, b in self.dtype_mismatched[:8])
            more = f"; and {len(self.dtype_mismatched) - 8} more" if len(self.dtype_mismatched) > 8 else ""
            parts.append(f"dtype mismatches, not a float-to-float cast ({len(self.dtype_mismatched)}): {shown}{more}")
        return "\n".join(parts)


def _grouped(keys: List[str], limit: int = 8) -> str:
    """Keys grouped by their module (the part before the last dot), e.g. 'decode_head.psp_modules.0.1.bn.* (5)'."""
    groups: Dict[str, int] = collections.OrderedDict()
    for k in keys:
        head = k.rsplit(".", 1)[0] if "." in k else k
        groups[head] = groups.get(head, 0) + 1
    shown = [f"{g}.* ({n})" if n > 1 else next(k for k in keys if k.rsplit(".", 1)[0] == g) for g, n in
             list(groups.items())[:limit]]
    more = f", and {len(groups) - limit} more modules" if len(groups) > limit else ""
    return ", ".join(shown) + more


def compare_state_dicts(model_sd: Mapping[str, Tensor], ckpt_sd: Mapping[str, Tensor]) -> LoadReport:
    missing = [k for k in model_sd if k not in ckpt_sd]
    unexpected = [k for k in ckpt_sd if k not in model_sd]
    mismatched = [
        (k, tuple(ckpt_sd[k].shape), tuple(v.shape))
        for k, v in model_sd.items()
        if k in ckpt_sd and tuple(ckpt_sd[k].shape) != tuple(v.shape)
    ]
    shaped = {k for k, _, _ in mismatched}
    dtypes = [
        (k, ckpt_sd[k].dtype, v.dtype)
        for k, v in model_sd.items()
        if k in ckpt_sd and k not in shaped and ckpt_sd[k].dtype != v.dtype
        and not (ckpt_sd[k].is_floating_point() and v.is_floating_point())
    ]
    return LoadReport(missing, unexpected, mismatched, dtype_mismatched=dtypes)


def load_checkpoint(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    strict: bool = True,
    map_location="cpu",
    prefix: Optional[str] = None,
) -> LoadReport:
    """Loads the checkpoint at `path` into `model` and returns a LoadReport (its `meta` is the checkpoint's).

    strict=True (default): every key and shape must match, else CheckpointError with the differences and the
    model unchanged. strict=False: loads the keys whose shapes match and whose dtype is the model's (or a float
    one for a float entry) and reports the rest. Either way a checkpoint whose weights hold NaN or infinite values
    is refused (check_finite), the model unchanged.
    prefix: load only the checkpoint entries under this prefix, stripped (e.g. prefix='backbone' puts a
    segmentor checkpoint's backbone into a bare ResNeSt).
    """
    sd, meta = read_state_dict(path, map_location)
    if prefix:
        p = prefix.rstrip(".") + "."
        sd = collections.OrderedDict((k[len(p):], v) for k, v in sd.items() if k.startswith(p))
        if not sd:
            raise CheckpointError(f"{os.fspath(path)!r} has no entries under prefix {prefix!r}")
    report = compare_state_dicts(model.state_dict(), sd)
    report.meta = meta
    if strict and not report.ok:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} does not fit {type(model).__name__} (nothing was loaded):\n{report}"
        )
    skipped = report.skipped
    loaded = collections.OrderedDict((k, v) for k, v in sd.items() if k not in skipped)
    check_finite(loaded, os.fspath(path))
    model.load_state_dict(loaded, strict=False)
    return report


def check_finite(sd: Mapping[str, Tensor], path: str) -> None:
    """CheckpointError naming `path` and the first tensors when a floating-point entry of `sd` holds a NaN or an
    infinity. Such weights (a training run that diverged, a damaged file) load without complaint and give a label
    map of one class, scored as a poor but plausible mIoU. One isfinite pass per tensor; meta tensors, which hold no
    values, pass."""
    floats = [k for k, v in sd.items() if v.is_floating_point() or v.is_complex()]
    bad = [k for k in floats if not sd[k].is_meta and not bool(torch.isfinite(sd[k]).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"checkpoint {path!r} holds NaN or infinite values in {len(bad)} of its {len(floats)} floating-point "
            f"tensors ({shown}): nothing was loaded (weights of a training run that diverged, or a damaged file?)")
