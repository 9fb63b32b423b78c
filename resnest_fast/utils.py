"""Small rules every layer needs, kept in one place: argument pairs, atomic file writes, "are we syncing", a signal
as an exception.

A leaf: imports nothing of resnest_fast, so any layer may import it.
"""
import contextlib
import os
import re
import secrets
import signal
import stat
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

__all__ = ["int_pair", "SGD_NUMERIC_OPTIONS", "check_number", "check_path", "atomic_write", "atomic_write_leftovers",
           "fsync_dir", "file_in_the_way", "not_a_folder", "not_a_file", "unwritable_folder", "write_refusal",
           "distributed_world_size", "check_input_dtype", "eval_mode", "Interrupted", "interruption", "signal_handled",
           "sigterm_interrupts", "hold_sigterm"]

PathLike = Union[str, os.PathLike]


def int_pair(value, name: str, minimum: int = 0) -> Tuple[int, int]:
    """`value` (an int, or a pair of ints as a tuple or list) as a pair (h, w) of Python ints >= `minimum`.

    TypeError for a value that is not an int or a pair of ints (bool is not an int here), ValueError for a
    sequence that is not a pair or an int below `minimum`; the message names `name`.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        items = (value, value)
    elif isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        items = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


# the options of torch's SGD that are numbers >= 0 (the training schedule's and mmseg's optim_wrapper.optimizer): torch
# compares them with 0 first, so a string failed as "'<' not supported between instances of 'str' and 'float'"
SGD_NUMERIC_OPTIONS = ("lr", "momentum", "dampening", "weight_decay")


def check_number(value, name: str, minimum: float = 0.0) -> float:
    """`value` as a float when it is a finite number >= minimum (bool is not a number here), else ValueError naming
    `name`. A config value of nan or inf, or a quoted number, arrives as a string from --cfg-options."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = " (a string: leave out the quotes)" if isinstance(value, str) and _is_float_text(value) else ""
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}{hint}")
    if not (np.isfinite(value) and value >= minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def _is_float_text(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text.strip("'\""))))
    except ValueError:
        return False


def check_path(value, name: str, expected: str = "a path"):
    """`value` unless it is an empty (or blank) string, else ValueError naming `name` and what was `expected`. The
    OS and pathlib read '' as the current folder (Path('') == Path('.')), so an unset shell variable in a command
    line would search, read or write the whole working directory instead of being refused."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{name} is an empty string: expected {expected}")
    return value


def fsync_dir(folder: PathLike) -> None:
    """Flush a folder's entry list, so a file just moved into it survives a crash (a no-op where folders
    cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_in_the_way(path: PathLike) -> Optional[Path]:
    """The nearest of `path` and its parents that exists and is not a folder, or None."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def not_a_file(path: PathLike) -> Optional[str]:
    """What `path` is when it exists but is not a regular file ('a folder', 'a named pipe (FIFO)', ...), else None.
    Opening a FIFO would wait for a writer, and 'not found' would send the user looking for a file that is there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISREG, None), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def _dangling_link(folder: Path) -> Optional[Path]:
    """The nearest of `folder` and its parents that is a symbolic link to nothing, or None."""
    for p in (folder, *folder.parents):
        if p.is_symlink() and not p.exists():
            return p
        if p.exists():
            return None
    return None


def not_a_folder(folder: PathLike, name: str) -> Optional[str]:
    """None when `folder` is a folder or can be made one; else one line naming it as `name` (an argument, such as
    '--out-dir') and the file in the way, `folder` itself or one of its parents, or the symbolic link to nothing
    (which mkdir meets as 'File exists')."""
    folder = Path(folder)
    link = _dangling_link(folder)
    if link is not None:
        what = "is" if link == folder else f"cannot be created: {link} is"
        return f"{name} {str(folder)!r} {what} a symbolic link to {os.readlink(link)}, which does not exist"
    blocker = file_in_the_way(folder)
    if blocker is None:
        return None
    what = "is a file" if blocker == folder else f"cannot be created: {blocker} is a file"
    return f"{name} {str(folder)!r} {what}, not a folder"


def unwritable_folder(folder: PathLike, name: str) -> Optional[str]:
    """not_a_folder, and also one line when the nearest existing folder of `folder` (itself or a parent) is on a
    read-only file system or denies writing: None only when files can be written in `folder` once it is made."""
    refusal = not_a_folder(folder, name)
    if refusal:
        return refusal
    path = Path(os.path.abspath(folder))
    reason = write_refusal(next(p for p in (path, *path.parents) if p.exists()))
    return f"{name} {str(folder)!r} cannot be written: {reason}" if reason else None


def write_refusal(folder: PathLike) -> Optional[str]:
    """Why files cannot be created in the existing folder `folder` ('F is on a read-only file system', 'permission
    denied in F'), or None. A read-only mount stops root too; permissions are as os.access reads them."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
    except (OSError, AttributeError):  # no statvfs (Windows): left to the write itself
        pass
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"permission denied in {folder}"
    return None


_TOKEN_BYTES = 6


def _temp_name_parts(path: Path, to_path: bool) -> Tuple[str, str]:
    """(prefix, suffix) of the temporary file's name, the random token going between them."""
    return (f".{path.stem}.", f".tmp{path.suffix}") if to_path else (f".{path.name}.", ".tmp")


def atomic_write_leftovers(paths: Iterable[PathLike], to_path: bool = False) -> List[Path]:
    """The temporary files that atomic_write calls for `paths`, killed before their cleanup (SIGKILL, power
    loss), left beside them: exactly the names atomic_write gives them, never any other file. Each folder is
    listed once."""
    by_folder: Dict[Path, List[str]] = {}
    for path in map(Path, paths):
        prefix, suffix = _temp_name_parts(path, to_path)
        name = f"{re.escape(prefix)}[0-9a-f]{{{2 * _TOKEN_BYTES}}}{re.escape(suffix)}"
        by_folder.setdefault(path.parent, []).append(name)
    found = []
    for folder, names in by_folder.items():
        pattern = re.compile("|".join(names))
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        found += [folder / name for name in entries if pattern.fullmatch(name)]
    return sorted(found)


def atomic_write(path: PathLike, write: Callable, *, overwrite: bool = True, to_path: bool = False) -> bool:
    """Writes a file so that readers see either nothing new or the whole file, never part of it.

    write(f) writes into a binary file object (or, with to_path=True, write(tmp_path) writes a file at that
    path: for savers that only take a path). The temporary file is hidden in `path`'s folder (same filesystem):
    `.<name>.<random>.tmp`, or with to_path `.<stem>.<random>.tmp<suffix>` (savers pick the format by the
    suffix); it is fsynced, then moved into place. overwrite=False keeps an existing `path` and
    returns False, also against a file that appears meanwhile (the move is a hard link, which fails rather
    than replace). The temporary file is removed whatever happens. Returns True when `path` was written.
    """
    path = Path(path)
    prefix, suffix = _temp_name_parts(path, to_path)
    tmp = path.with_name(prefix + secrets.token_hex(_TOKEN_BYTES) + suffix)
    try:
        if to_path:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: check, then move
                if path.exists():
                    return False
                os.replace(tmp, path)
        fsync_dir(path.parent)
        return True
    finally:
        if tmp.exists():
            tmp.unlink()


class Interrupted(KeyboardInterrupt):
    """A signal stopped the work: SIGINT (Ctrl-C) or, inside `sigterm_interrupts`, SIGTERM. A KeyboardInterrupt, so
    that whatever lets go of its files on Ctrl-C (locks, temporary files) does the same on SIGTERM, and callers that
    catch Ctrl-C catch both. `signum`: which signal; the message: where the work stopped and how to go on."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


def interruption(signum: int) -> str:
    """How the one line of a command stopped by a signal names it: 'interrupted (SIGTERM)'."""
    return f"interrupted ({signal.Signals(signum).name})"


_sigterm_held = False


def _raise_interrupted(signum, frame):
    if not _sigterm_held:
        raise Interrupted("", signum)


def hold_sigterm(held: bool) -> None:
    """While held, a SIGTERM that sigterm_interrupts would raise is dropped: for a process already ending on an error
    of its own, which must stay what it reports (under torchrun, the SIGTERM sent to every process once one has
    ended would otherwise replace the error that ended it)."""
    global _sigterm_held
    _sigterm_held = held


@contextlib.contextmanager
def signal_handled(signum: int, handler) -> Iterator[None]:
    """Within the block, `handler` (a function or signal.SIG_IGN) handles `signum`; the handler before it is put
    back after. Outside the main thread (no handler can be set there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_interrupts():
    """Within the block, SIGTERM raises Interrupted(signum=SIGTERM) in the main thread, where the default would
    end the process without running a `finally`. Outside the main thread nothing changes."""
    return signal_handled(signal.SIGTERM, _raise_interrupted)


def distributed_world_size(group: Optional[object] = None) -> int:
    """The number of processes a collective over `group` (default: the world) would reach; 1 when
    torch.distributed is unavailable or not initialised. More than 1 means statistics must be synchronised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group) if group is not None else dist.get_world_size()


def check_input_dtype(module: str, x, weight) -> None:
    """TypeError naming `module` when x (a tensor) cannot meet `weight` in a conv: another dtype outside autocast
    (torch's own message, "expected scalar type Double but found Float", names neither the module nor the fix).
    weight None (a conv replaced by one without a plain weight, e.g. after optimize_for_inference): no check."""
    import torch

    if weight is None or x.dtype == weight.dtype:
        return
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(f"{module}: input x is {x.dtype} but the weights are {weight.dtype}: convert the input "
                    f"(x.to({weight.dtype})) or the module (module.to({x.dtype}) for a floating dtype)")


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """model.eval() for the duration; each submodule's own flag is put back afterwards (mixed flags such as
    norm_eval or frozen stages survive, which model.train(mode) would not guarantee)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
