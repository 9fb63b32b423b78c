"""ImageNet-pretrained weights for a ResNeSt backbone, from the three layouts they are published in.

mmseg's ResNeSt segmenters start from ImageNet weights (`pretrained='open-mmlab://resnest101'`). Those weights
exist in three key layouts, recognised here by their keys (and by nothing else) and renamed onto this
project's, which are mmseg's (`stem.{0,1,3,4,6,7}`, `layerX.Y.{conv1,bn1,conv2.{conv,bn0,fc1,bn1,fc2},conv3,bn3,
downsample.{1,2}}`):

- OpenMMLab's `resnest{50,101,200}_d2` files (what `open-mmlab://resnestNNN` names): already mmseg's keys,
  possibly under `state_dict` and with `module.` / `backbone.` prefixes;
- the original ResNeSt release (`resnest.torch.resnest{50,101,200,269}`) and timm's `resnest{50d,101e,200e,269e}`:
  both a `conv1.{0,1,3,4,6}` deep stem followed by a separate `bn1` (-> `stem.7`); their blocks already use
  mmseg's names (the split attention's `conv`, `bn0`, `fc1`, `bn1`, `fc2`; `downsample.{1,2}` after the pool
  or timm's Identity at index 0), and their classifier is `fc`. The two share every key, so they are one layout.

Loading is all or nothing: every weight and buffer of the backbone must be in the file with its shape (the
classifier is dropped, stages the backbone does not build are skipped), else `CheckpointError` lists what is
missing or has another shape and the backbone is left untouched. A file whose `num_batches_tracked` counters are
all absent (older PyTorch) is accepted: they only matter for BN with momentum=None, and keep their value.
"""
import collections
import os
import re
import urllib.error
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from resnest_fast.checkpoint import (CheckpointError, check_finite, compare_state_dicts, read_state_dict,
                                     strip_module_prefix)

__all__ = ["OPENMMLAB_URLS", "PretrainedReport", "PretrainedUnavailable", "load_pretrained", "resolve_pretrained",
           "to_backbone_keys"]

# From mmengine 0.10.7's mmengine/hub/openmmlab.json, which `open-mmlab://NAME` resolves through; mmengine's
# loader keeps the file in torch's hub cache under the URL's file name, so a file it downloaded is found here.
OPENMMLAB_URLS = {
    "resnest50": "https://download.openmmlab.com/pretrain/third_party/resnest50_d2-7497a55b.pth",
    "resnest101": "https://download.openmmlab.com/pretrain/third_party/resnest101_d2-f3b931b2.pth",
    "resnest200": "https://download.openmmlab.com/pretrain/third_party/resnest200_d2-ca88e41f.pth",
}
_SCHEMES = ("open-mmlab://", "openmmlab://")

OPENMMLAB = "OpenMMLab (mmcv/mmseg keys: stem.*, layerX.*)"
RELEASE = "ResNeSt release / timm (conv1.* deep stem + bn1)"
# the ImageNet classifier: `fc` in every layout, or an mmpretrain-style `head.fc` beside `backbone.*`
_CLASSIFIER = ("fc.", "head.")
# the release/timm stem: conv1.{0,1,3,4,6} are mmseg's stem.{0,1,3,4,6}; the stem's last BN is their bn1
_RELEASE_STEM = re.compile(r"^conv1\.([01346])\.")
_LAYER = re.compile(r"^layer(\d+)\.")


class PretrainedUnavailable(CheckpointError):
    """An `open-mmlab://` checkpoint is neither in torch's hub cache nor downloadable (no network)."""


@dataclass
class PretrainedReport:
    """What `load_pretrained` did: the layout recognised, the file read, how many tensors were loaded (every entry
    of the backbone's state_dict, or all but the absent `num_batches_tracked`), and the checkpoint entries left
    out: the classifier, the stages the backbone does not build, and anything else (`extra`)."""

    layout: str
    source: str
    path: Optional[str]
    loaded: int
    classifier: List[str] = field(default_factory=list)
    skipped_stages: List[str] = field(default_factory=list)
    extra: List[str] = field(default_factory=list)
    counters_absent: int = 0

    def __str__(self) -> str:
        where = self.source if self.path in (None, self.source) else f"{self.source} ({self.path})"
        text = f"{where}: {self.layout} layout, every backbone weight loaded ({self.loaded} tensors)"
        if self.counters_absent:
            text += f"; {self.counters_absent} BN num_batches_tracked counters absent from the file, kept"
        if self.skipped_stages:
            text += f"; {len(self.skipped_stages)} entries of stages the backbone does not build skipped"
        if self.extra:
            shown = ", ".join(self.extra[:5]) + (", ..." if len(self.extra) > 5 else "")
            text += f"; {len(self.extra)} entries not in the backbone ignored: {shown}"
        return text


def _strip_prefixes(sd: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """(entries under `backbone.` with it removed, or all of them; the other keys) after removing DDP's `module.`."""
    sd = strip_module_prefix(sd)
    if any(k.startswith("backbone.") for k in sd):
        inside = collections.OrderedDict((k[len("backbone."):], v) for k, v in sd.items() if k.startswith("backbone."))
        return inside, [k for k in sd if not k.startswith("backbone.")]
    return sd, []


def to_backbone_keys(state_dict: Mapping[str, Tensor]) -> Tuple[str, Dict[str, Tensor], List[str]]:
    """(layout, entries renamed to this project's backbone keys, other keys of the file) for an ImageNet ResNeSt
    state_dict in one of the layouts of this module. The classifier (`fc.*`) is among the entries, under its
    name. Raises CheckpointError when the keys match no layout."""
    sd, others = _strip_prefixes(state_dict)
    if "stem.0.weight" in sd and "stem.7.weight" in sd:
        return OPENMMLAB, sd, others
    if "conv1.0.weight" in sd and "bn1.weight" in sd and "conv1.6.weight" in sd:
        out = collections.OrderedDict()
        for k, v in sd.items():
            stem = _RELEASE_STEM.match(k)
            if stem:
                k = f"stem.{stem.group(1)}.{k[stem.end():]}"
            elif k.startswith("bn1."):
                k = "stem.7." + k[len("bn1."):]
            out[k] = v
        return RELEASE, out, others
    heads = sorted({k.split(".")[0] for k in sd})
    raise CheckpointError(
        f"the keys match no ResNeSt ImageNet layout (their first names: {', '.join(heads[:8])}"
        f"{', ...' if len(heads) > 8 else ''}); expected OpenMMLab's (stem.0.weight ... stem.7.*, layer1.0.conv2.conv."
        f"weight, ...) or the ResNeSt release's / timm's (conv1.0.weight ... conv1.6.weight, bn1.*, layer1.*)"
    )


def _cache_path(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def resolve_pretrained(source: Union[str, os.PathLike], *, progress: bool = True) -> str:
    """The local file for `source`: a path as it is, or `open-mmlab://resnestNNN` as mmengine resolves it (the file
    in `torch.hub.get_dir()/checkpoints/`, downloaded there first when absent). Raises PretrainedUnavailable when
    it is absent and cannot be downloaded, CheckpointError for an unknown name, FileNotFoundError for a path."""
    source = os.fspath(source)
    scheme = next((s for s in _SCHEMES if source.startswith(s)), None)
    if scheme is None:
        if not os.path.exists(source):
            raise FileNotFoundError(f"pretrained checkpoint {source!r} does not exist")
        return source
    name = source[len(scheme):]
    if name not in OPENMMLAB_URLS:
        raise CheckpointError(
            f"pretrained={source!r}: unknown OpenMMLab ResNeSt checkpoint; known: "
            f"{', '.join('open-mmlab://' + n for n in OPENMMLAB_URLS)}, or give a local file"
        )
    url = OPENMMLAB_URLS[name]
    path = _cache_path(url)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        # writes a temporary file beside `path` and renames it when complete: never a half-written checkpoint
        torch.hub.download_url_to_file(url, path, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PretrainedUnavailable(
            f"pretrained={source!r} is not in torch's hub cache and could not be downloaded from {url} ({reason}). "
            f"Download that file on a machine with a network and put it at {path} (or point model.pretrained at a "
            f"local copy), or train from scratch with --cfg-options model.pretrained=None"
        ) from exc
    return path


def _stage(key: str) -> Optional[int]:
    m = _LAYER.match(key)
    return int(m.group(1)) if m else None


def load_pretrained(
    backbone: nn.Module,
    source: Union[str, os.PathLike, Mapping[str, Tensor]],
    *,
    progress: bool = True,
) -> PretrainedReport:
    """Loads ImageNet ResNeSt weights into `backbone` (a ResNeSt of this project, mmseg's keys) and returns what it
    did. source: a checkpoint file, `open-mmlab://resnest{50,101,200}` (resolved as mmseg/mmengine do), or a
    state_dict already in memory. The layout is recognised by the keys (see the module docstring).

    Raises CheckpointError, with the backbone unchanged, when the file misses any backbone weight or buffer
    (`num_batches_tracked` aside), has one with another shape or a dtype that is not a float-to-float cast, or with
    a NaN or infinite value, or has blocks or stem entries the backbone lacks (a deeper network);
    PretrainedUnavailable when an `open-mmlab://` file cannot be had offline.
    """
    if isinstance(source, Mapping):
        name, path, sd = "the given state_dict", None, source
    else:
        name = os.fspath(source)
        path = resolve_pretrained(name, progress=progress)
        sd, _ = read_state_dict(path)
    where = name if path in (None, name) else f"{name} ({path})"
    layout, mapped, others = to_backbone_keys(sd)
    model_sd = backbone.state_dict()
    stages = {_stage(k) for k in model_sd} - {None}
    classifier = [k for k in mapped if k.startswith(_CLASSIFIER)]
    skipped = [k for k in mapped if k not in model_sd and (_stage(k) or 0) > max(stages, default=0)]
    left = set(classifier) | set(skipped)
    candidates = collections.OrderedDict((k, v) for k, v in mapped.items() if k not in left)
    report = compare_state_dicts(model_sd, candidates)
    counters = [k for k in report.missing if k.endswith(".num_batches_tracked")]
    if len(counters) == sum(k.endswith(".num_batches_tracked") for k in model_sd):
        report.missing = [k for k in report.missing if k not in counters]
    else:
        counters = []
    # entries of the stem or of a built stage that the backbone lacks: another depth or width, not extra baggage
    foreign = [k for k in report.unexpected if k.startswith("stem.") or _stage(k) in stages]
    if report.missing or report.mismatched or report.dtype_mismatched or foreign:
        report.unexpected = foreign
        raise CheckpointError(
            f"pretrained {where} ({layout} layout) does not fit the backbone {type(backbone).__name__}"
            f"{_describe(backbone)} (nothing was loaded):\n{report}"
        )
    classifier += [k for k in others if k.startswith(_CLASSIFIER)]
    extra = list(report.unexpected) + [k for k in others if not k.startswith(_CLASSIFIER)]
    loading = collections.OrderedDict((k, v) for k, v in candidates.items() if k in model_sd)
    check_finite(loading, f"pretrained {where}")  # only what loads: a NaN in the dropped classifier does no harm
    backbone.load_state_dict(loading, strict=False)
    return PretrainedReport(layout=layout, source=name, path=path, loaded=len(model_sd) - len(counters),
                            classifier=classifier, skipped_stages=skipped, extra=extra,
                            counters_absent=len(counters))


def _describe(backbone: nn.Module) -> str:
    depth, stem = getattr(backbone, "depth", None), getattr(backbone, "stem_channels", None)
    return f"(depth {depth}, stem_channels {stem})" if depth is not None else ""
