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
matches a checkpoint's, so nothing reads it, and `clean_temp_files` removes it when the run resumes. A write that
fails (full disk, read-only folder) leaves the older files as they were and raises `WriteError`, one line that names
the folder and, for a full disk, the space needed.

  .lock          held (fcntl.flock, exclusive) by the run training in this folder, for its whole life; it holds
                 that run's process id, host and start time. The kernel drops the lock when its process dies,
                 however it dies, so a lock file left behind never blocks a later run (`WorkDirLock`).
"""
import datetime
import errno
import fcntl
import os
import random
import re
import shutil
import socket
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from resnest_fast.utils import atomic_write, file_in_the_way, not_a_folder

__all__ = [
    "LATEST",
    "LOCK",
    "WriteError",
    "WorkDirLock",
    "describe_write_error",
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
LOCK = ".lock"
_CHECKPOINT = re.compile(r"^iter_(\d+)\.pth$")
_TEMP = re.compile(r"^\.(iter_\d+\.pth|latest)\.[0-9a-f]+\.tmp$")  # resnest_fast.utils.atomic_write's names
PathLike = Union[str, os.PathLike]


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration}.pth"


class WriteError(OSError):
    """A file could not be written (full disk, read-only or missing folder); the older files are unchanged."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def describe_write_error(exc: BaseException, path: PathLike, needed: Optional[int] = None) -> Optional[str]:
    """One line saying why writing `path` (`needed` bytes, if known) failed with `exc`, or None when exc is not a
    failure to write (torch.save reports a short write as a RuntimeError from its zip writer, errno lost)."""
    path = Path(path)
    folder = path.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    code = getattr(exc, "errno", None)
    short_write = isinstance(exc, RuntimeError) and "inline_container" in str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or (short_write and free is not None and needed and free < needed):
        size = f": {_mib(needed)} MiB needed" if needed else ""
        left = f", {_mib(free)} MiB free" if free is not None else ""
        return f"no space left on {folder}{size}{left}"
    if not isinstance(exc, OSError) and not short_write:
        return None
    blocker = file_in_the_way(folder)
    if blocker is not None or code == errno.ENOTDIR:
        return f"cannot write {path}: {blocker or folder} is a file, not a folder"
    if code == errno.EROFS:
        return f"cannot write {path}: {folder} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied in {folder}"
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    return f"cannot write {path}: {reason}"


def _guarded_write(path: PathLike, write, needed: Optional[int]) -> None:
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as exc:
        message = describe_write_error(exc, path, needed)
        if message is None:
            raise
        raise WriteError(message) from exc


def _tensor_bytes(obj) -> int:
    """The bytes of the tensors in a nested state (each storage once): about what torch.save writes."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def atomic_save(obj, path: PathLike) -> None:
    """torch.save(obj) to `path` through a temporary file in the same folder and os.replace; WriteError (the
    older file, if any, unchanged) when it cannot be written."""
    _guarded_write(path, lambda f: torch.save(obj, f), _tensor_bytes(obj))


def atomic_write_text(path: PathLike, text: str) -> None:
    """`text` (UTF-8) written like atomic_save; WriteError when it cannot be."""
    data = text.encode("utf-8")
    _guarded_write(path, lambda f: f.write(data), len(data))


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


# --------------------------------------------------------------------------------------------------- the lock


class WorkDirLock:
    """An exclusive lock on a work directory: `WorkDirLock.acquire(work_dir)` creates the folder (and its missing
    parents) and takes `<work_dir>/.lock` with fcntl.flock, without waiting; `release()` removes the lock file,
    drops the lock and removes the folders acquire created when nothing else was put in them.

    A lock held by a live process: ValueError naming the folder and that process. A lock file whose holder died
    (flock succeeds, the file still holds a record): taken over, and `stale` holds the old record for a note. A
    folder that cannot be made or written: WriteError naming the file in the way or the cause.
    """

    def __init__(self, folder: Path, fd: int, created: List[Path], stale: Optional[str]):
        self.folder, self.path = folder, folder / LOCK
        self._fd: Optional[int] = fd
        self._created = created
        self.stale = stale

    @classmethod
    def acquire(cls, work_dir: PathLike) -> "WorkDirLock":
        folder = Path(work_dir)
        refusal = not_a_folder(folder, "work dir")
        if refusal:
            raise WriteError(refusal)
        created = [p for p in (folder, *folder.parents) if not p.exists()][::-1]  # outermost first
        path = folder / LOCK
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            cls._remove_empty(created)
            where = created[0].parent if created else folder
            reason = {errno.EROFS: f"{where} is on a read-only file system", errno.EACCES: f"permission denied in "
                      f"{where}", errno.ENOSPC: f"no space left on {where}"}.get(exc.errno, exc.strerror or str(exc))
            raise WriteError(f"work dir {str(folder)!r} cannot be created: {reason}") from exc
        try:
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "a process"
                    os.close(fd)
                    raise ValueError(f"work dir {str(folder)!r} is in use by another training run ({holder}): "
                                     "wait for it to end, or choose another --work-dir") from None
                # the holder removes the file before it lets go: a lock on a file no longer at `path` guards nothing
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                mine = os.fstat(fd)
                if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                    break
                os.close(fd)
            stale = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or None
            record = (f"process {os.getpid()} on {socket.gethostname()}, started "
                      f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except OSError as exc:
            cls._remove_empty(created)
            raise WriteError(describe_write_error(exc, path) or str(exc)) from exc
        return cls(folder, fd, created, stale)

    @staticmethod
    def _remove_empty(created: List[Path]) -> None:
        for p in reversed(created):  # innermost first
            try:
                p.rmdir()
            except OSError:
                return

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a lock file left behind is harmless: the next run takes it over
        os.close(self._fd)  # drops the flock
        self._fd = None
        self._remove_empty(self._created)
