"""What the commands share: the runtime options, the one-line error, rank 0 under torchrun, and `main`."""
import argparse
import os
import signal
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

from resnest_fast.backend import BACKENDS, environment_backend
from resnest_fast.utils import check_path, interruption, sigterm_interrupts

__all__ = ["add_runtime_arguments", "check_path_arguments", "is_rank0", "percent", "print_error", "run_command",
           "command_main"]


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend (split attention), --device and --no-progress."""
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="split-attention backend (default: RESNEST_FAST_BACKEND or auto)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_path_arguments(args: argparse.Namespace, paths: Dict[str, Tuple[str, str]]) -> None:
    """argparse.ArgumentTypeError for the first path argument given as an empty string. paths: attribute of args ->
    (how the command line names it, what it expects); a list value (nargs) is checked item by item, and a value
    that is not a string (a flag's const, an unset option's None) is left alone."""
    for attr, (name, expected) in paths.items():
        value = getattr(args, attr, None)
        for item in value if isinstance(value, list) else [value]:
            try:
                check_path(item, name, expected)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from exc


def is_rank0() -> bool:
    """True outside torchrun and on its rank 0: the process that prints (every rank meets the same errors)."""
    return os.environ.get("RANK", "0") in ("", "0")


def percent(fraction: Optional[float]) -> str:
    """A metric for the summary line: None (no labelled pixel to score, mmseg's NaN) is 'n/a'."""
    return "n/a" if fraction is None else f"{100 * fraction:.2f}"


def print_error(prog: str, exc: BaseException) -> None:
    """The command's one line for an error it expected (bad input or environment), on rank 0 only. The commands
    exit 2 after such an error when they did nothing (usage, config, checkpoint, data, output path) and 1 when
    the work had started and failed (a training that diverged, a result that could not be written)."""
    if is_rank0():
        print(f"{prog}: error: {exc}", file=sys.stderr)


def run_command(run_from_args: Callable[..., int], args: argparse.Namespace, prog: str) -> int:
    """run_from_args(args, prog=prog) once the environment is usable: a RESNEST_FAST_BACKEND that names no
    backend is a usage error of every command (one line, exit 2), not a traceback from deep inside a model.

    Ctrl-C and SIGTERM end the command as the shell expects (exit 128 + the signal's number) with one line, the
    interruption's own message when it has one (training says where to resume), instead of a traceback; SIGTERM
    goes through the same `finally` blocks as Ctrl-C, so a training run lets go of its work dir."""
    try:
        environment_backend()
    except ValueError as exc:
        print_error(prog, exc)
        return 2
    with sigterm_interrupts():
        try:
            return run_from_args(args, prog=prog)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            if is_rank0():
                print(f"{prog}: {str(exc) or interruption(signum)}", file=sys.stderr)
            return 128 + signum


def command_main(doc: str, add_arguments: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
                 run_from_args: Callable[..., int], prog: str, argv: Optional[Sequence[str]] = None) -> int:
    """`python -m resnest_fast.cli.<command>`: the command's parser (first paragraph of its docstring as the
    description), then run_from_args; returns the exit code."""
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0]))
    return run_command(run_from_args, parser.parse_args(argv), parser.prog)
