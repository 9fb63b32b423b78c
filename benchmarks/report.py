"""Collects benchmark rows and writes them to CSV with the context needed to trust them later; and what every
benchmark command shares about its command line: the numeric argument types, the up-front check of where results
go (--overwrite), atomic writes, and Ctrl-C."""
import argparse
import csv
import datetime
import io
import math
import os
import platform
import signal
import subprocess
import sys
from typing import Callable, Iterable, List, Optional, Sequence

import torch

from resnest_fast.utils import atomic_write, check_path, not_a_file, signal_handled, unwritable_folder

RESULTS = {}  # file stem -> list of row dicts
SUMMARY = []
HERE = os.path.dirname(os.path.abspath(__file__))
OVERWRITE_HELP = "replace result files that already exist (default: refuse them before anything is measured)"


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}; {os.cpu_count()} cpus; torch threads {torch.get_num_threads()}; gpu {gpu}"


def git_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def context():
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine(),
        "malloc": os.environ.get("GLIBC_TUNABLES", "glibc default"),
    }


def add(stem, row):
    RESULTS.setdefault(stem, []).append(row)


def note(line):
    SUMMARY.append(line)


def summary_lines():
    malloc = os.environ.get("GLIBC_TUNABLES", "glibc default")
    return (["", f"resnest_fast benchmark summary ({machine()}; malloc: {malloc})"] + SUMMARY) if SUMMARY else []


# ------------------------------------------------------------------------------------- numeric arguments


def _number(text: str, kind: type, what: str, ok: Callable[[float], bool]):
    """`text` parsed by `kind` when ok(value), else argparse.ArgumentTypeError saying what was expected (argparse
    adds the argument's name)."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def add_model_and_size(parser) -> None:
    """--model and --size, as the per-model commands (stages, inference_memory) take them."""
    parser.add_argument("--model", default="deeplabv3",
                        help="a config name or head, or 'all' (each model in turn; default deeplabv3)")
    parser.add_argument("--size", nargs=2, type=positive_int, default=(256, 512), metavar=("H", "W"))


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (iterations, threads, sizes)."""
    return _number(text, int, "a whole number >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (warm-up iterations)."""
    return _number(text, int, "a whole number >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a bandwidth, a learning rate, a time)."""
    return _number(text, float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a tolerance)."""
    return _number(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


# ------------------------------------------------------------------------------------------- output paths


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def csv_name(stem: str) -> str:
    """The file name flush() gives the rows of `stem`: runs with a tuned malloc (GLIBC_TUNABLES) get their own."""
    tag = "-tuned-malloc" if os.environ.get("GLIBC_TUNABLES") else ""
    return f"{stem}{tag}.csv"


def default_results_dir() -> str:
    return os.path.join(HERE, "results")


def folder_refusal(folder: str, name: str, files: Iterable[str] = (), overwrite: bool = False) -> Optional[str]:
    """None when a command may write `files` (names) into `folder`, else one line naming `name` (the argument) and
    what is wrong: an empty string, a file (or a symbolic link to nothing) at or above it, a folder that cannot be
    written, or, without `overwrite`, one of `files` already there. A folder in the place of one of `files` is
    refused even with `overwrite`."""
    try:
        check_path(folder, name, "a folder")
    except ValueError as exc:
        return str(exc)
    refusal = unwritable_folder(folder, name)
    if refusal:
        return refusal
    present = [f for f in files if os.path.lexists(os.path.join(folder, f))]
    for f in present:
        what = not_a_file(os.path.join(folder, f))
        if what:
            return f"{name} {folder!r} holds {what} named {f}, where a results file goes"
    if present and not overwrite:
        return (f"{name} {folder!r} already holds {', '.join(present)}: pass --overwrite to replace "
                f"{'it' if len(present) == 1 else 'them'}, or name another folder")
    return None


def file_refusal(path: str, name: str, overwrite: bool = False, suffix: Optional[str] = None) -> Optional[str]:
    """None when a command may write the file `path`, else one line naming `name` (the argument): an empty string,
    a name without `suffix` (e.g. '.png'), a folder or other non-file at `path`, a folder for it that cannot be
    made or written, or, without `overwrite`, a file already there."""
    expected = f"a {suffix} file" if suffix else "a file"
    try:
        check_path(path, name, expected)
    except ValueError as exc:
        return str(exc)
    what = not_a_file(path)
    if what or path.endswith(("/", os.sep)):
        return f"{name} {path!r} is {what or 'a folder'}: expected {expected}"
    if suffix and not path.lower().endswith(suffix):
        return f"{name} must name {expected}, got {path!r}"
    refusal = unwritable_folder(os.path.dirname(os.path.abspath(path)), f"{name} {path!r}: its folder")
    if refusal:
        return refusal
    if os.path.lexists(path) and not overwrite:
        return f"{name} {path!r} already exists: pass --overwrite to replace it"
    return None


def check_output_folder(parser: argparse.ArgumentParser, folder: Optional[str], name: str, files: Iterable[str],
                        overwrite: bool) -> str:
    """The results folder (None: benchmarks/results), or parser.error (exit 2) with folder_refusal's line. Call it
    before anything is measured."""
    folder = default_results_dir() if folder is None else folder
    refusal = folder_refusal(folder, name, files, overwrite)
    if refusal:
        parser.error(refusal)
    return folder


def check_output_file(parser: argparse.ArgumentParser, path: str, name: str, overwrite: bool,
                      suffix: Optional[str] = None) -> str:
    """`path`, or parser.error (exit 2) with file_refusal's line. Call it before anything is measured."""
    refusal = file_refusal(path, name, overwrite, suffix)
    if refusal:
        parser.error(refusal)
    return path


# ------------------------------------------------------------------------------------------------ reading


def read_csvs(parser: argparse.ArgumentParser, paths: Sequence[str], columns: Sequence[str]) -> dict:
    """{path: rows} of every CSV named, in order (for the plot commands); parser.error (exit 2) naming the first
    that is missing, not a file, unreadable, not text or without a column of `columns` in its header."""
    tables = {}
    for path in paths:
        what = not_a_file(path)
        if what:
            parser.error(f"CSV {path!r} is {what}: expected a CSV written by the benchmarks")
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                header = reader.fieldnames or []
        except FileNotFoundError:
            parser.error(f"CSV {path!r} does not exist: run the benchmarks first")
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            parser.error(f"CSV {path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}")
        missing = [c for c in columns if c not in header]
        if missing:
            parser.error(f"CSV {path!r} has no column {', '.join(missing)}: expected a CSV written by the benchmarks")
        tables[path] = rows
    return tables


def cell_number(row: dict, column: str) -> Optional[float]:
    """The number in a CSV cell; None where it is empty (not measured, e.g. a speedup without the reference);
    ValueError naming the column when it holds something else."""
    text = row.get(column)
    if text in ("", None):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"column {column} holds {text!r}, not a number") from None


def require_columns(parser: argparse.ArgumentParser, path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """parser.error naming `path` and the columns of `columns` that its rows (of one kind, e.g. one bench) lack."""
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        parser.error(f"CSV {path!r} has no column {', '.join(missing)} for its {rows[0].get('bench', '?')} rows: "
                     "expected a CSV written by the benchmarks")


# ------------------------------------------------------------------------------------------------ writing


def write_csv(path: str, fields: Sequence[str], rows: Iterable[dict]) -> str:
    """The rows as a CSV at `path`, all or nothing (a hidden temporary file beside it, moved into place; removed
    whatever happens). Returns `path`."""
    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
        text.flush()
        text.detach()

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)
    return path


def write_text(path: str, text: str) -> str:
    """`text` (UTF-8) at `path`, all or nothing like write_csv."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """A matplotlib figure as the PNG `path`, all or nothing like write_csv."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), to_path=True)
    return path


def flush(directory: Optional[str] = None) -> List[str]:
    """Every stem's rows, with context(), to <directory>/csv_name(stem) (None: benchmarks/results), each file
    written whole or not at all; the paths written. Where results go is checked before measuring
    (check_output_folder), not here."""
    directory = default_results_dir() if directory is None else directory
    ctx = context()
    paths = []
    for stem, rows in RESULTS.items():
        fields = list(ctx) + sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                                    if k in rows[0] else 999)
        paths.append(write_csv(os.path.join(directory, csv_name(stem)), fields, ({**ctx, **row} for row in rows)))
    return paths


# ------------------------------------------------------------------------------------------------- Ctrl-C


def sigint_held():
    """Within the block a second Ctrl-C is ignored (the rows measured so far are being written); the handler before
    it is restored after. Outside the main thread nothing changes."""
    return signal_handled(signal.SIGINT, signal.SIG_IGN)


INTERRUPTED_EXIT = 128 + signal.SIGINT


def interrupted_line(prog: str, rows: int, paths: Sequence[str]) -> str:
    """The one line a command prints when Ctrl-C stopped it: what it wrote, said to be partial."""
    if not rows:
        return f"{prog}: interrupted (Ctrl-C) before any result was measured; nothing written"
    return (f"{prog}: interrupted (Ctrl-C): partial results, the {rows} row{'s' if rows != 1 else ''} measured so far "
            f"written to {', '.join(paths)}")


def stopped(prog: str, rows: int, write: Callable[[], Sequence[str]]) -> int:
    """Ctrl-C during a command that has measured `rows` rows: write() puts them out and returns the paths it wrote
    (not called when there are none), a second Ctrl-C ignored meanwhile; one line says what was written, said to be
    partial; the exit code is 130, the shell's for Ctrl-C."""
    with sigint_held():
        paths = list(write()) if rows else []
        print(interrupted_line(prog, rows, paths), file=sys.stderr, flush=True)
    return INTERRUPTED_EXIT


def interrupted(prog: str, directory: Optional[str] = None) -> int:
    """stopped() for a command that collects its rows with add(): they go out through flush()."""
    return stopped(prog, sum(len(r) for r in RESULTS.values()), lambda: flush(directory))
