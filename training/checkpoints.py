"""Training checkpoints: mmseg's layout, written so that a crash at any instant leaves only complete files.

A checkpoint is a dict in mmengine's layout, so that resnest_fast.load_checkpoint, mmseg and mmengine read its
weights: `meta` (iter, seed, config, dataset_meta with classes and palette, versions), `state_dict` (the bare
model's names, no DDP prefix), `optimizer`, `param_schedulers`; and for an exact resume `rng_states` (torch, CUDA,
numpy and Python states of every rank) and `grad_scaler` (fp16). Everything in it loads with
torch.load(weights_only=True): numpy's generator state is stored as a tensor, not as an array.

Files in the work directory:
  iter_<N>.pth   the state after N iterations (mmengine's names); the newest `keep` are kept.
  latest         a text file holding the name of the newest complete checkpoint.
Each file is written to a hidden temporary file in the same folder (`.iter_<N>.pth.<random>.tmp`), flushed to
disk, then moved into place with os.replace, which is atomic within a filesystem; `latest` is rewritten the same
way, only after its checkpoint is in place. A killed process can leave a temporary file behind: its name never
matches a checkpoint's, so nothing reads it, and `clean_temp_files` removes it when the run resumes.
"""
import os
import random
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from resnest_fast.utils import atomic_write

__all__ = [
    "LATEST",
    "atomic_save",
    "atomic_write_text",
    "checkpoint_name",
    "list_checkpoints",
    "find_latest",
    "write_latest",
    "prune_checkpoints",
    "clean_temp_files",
    "rng_state",
    "set_rng_state",
]

LATEST = "latest"
_CHECKPOINT = re.compile(r"^iter_(\d+)\.pth$")
_TEMP = re.compile(r"^\.(iter_\d+\.pth|latest)\.[0-9a-f]+\.tmp$")  # resnest_fast.utils.atomic_write's names
PathLike = Union[str, os.PathLike]


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration}.pth"


def atomic_save(obj, path: PathLike) -> None:
    """torch.save(obj) to `path` through a temporary file in the same folder and os.replace."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def list_checkpoints(work_dir: PathLike) -> List[Tuple[int, Path]]:
    """[(iteration, path)] of the complete checkpoints in work_dir, oldest first."""
    folder = Path(work_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / m.group(0)) for m in map(_CHECKPOINT.match, os.listdir(folder)) if m]
    return sorted(found)


def find_latest(work_dir: PathLike) -> Optional[Path]:
    """The checkpoint `latest` names; if it is missing (a run killed before its first checkpoint, or a folder
    copied without it), the checkpoint of the highest iteration; None when there is none."""
    folder = Path(work_dir)
    pointer = folder / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if _CHECKPOINT.match(name) and (folder / name).is_file():
            return folder / name
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def write_latest(work_dir: PathLike, checkpoint: PathLike) -> None:
    atomic_write_text(Path(work_dir) / LATEST, Path(checkpoint).name + "\n")


def prune_checkpoints(work_dir: PathLike, keep: int) -> List[Path]:
    """Deletes all but the newest `keep` checkpoints (never the one `latest` names); returns what it deleted.
    keep <= 0 keeps everything."""
    if keep <= 0:
        return []
    latest = find_latest(work_dir)
    removed = []
    for _, path in list_checkpoints(work_dir)[:-keep]:
        if latest is not None and path == latest:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def clean_temp_files(work_dir: PathLike) -> List[Path]:
    """Removes the temporary files an interrupted run left in work_dir (and only those); returns them."""
    folder = Path(work_dir)
    if not folder.is_dir():
        return []
    removed = []
    for name in os.listdir(folder):
        if _TEMP.match(name):
            (folder / name).unlink(missing_ok=True)
            removed.append(folder / name)
    return removed


# --------------------------------------------------------------------------------------------------- RNG states


def rng_state() -> Dict[str, object]:
    """The generator states of this process (torch CPU, every CUDA device, numpy's global, Python's), in types
    that torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
