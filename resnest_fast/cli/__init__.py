"""The command line, `resnest-fast COMMAND` (or `python -m resnest_fast COMMAND`).

Each command is a leaf module of this package (`info`, `train`, `test`, `infer`) with `add_arguments`,
`run_from_args` and `main`; none imports another. A command's module is imported only when it runs, so `info`
never loads the training side.
"""
import argparse
import sys
from types import ModuleType
from typing import Optional, Sequence

from resnest_fast.cli._common import run_command

__all__ = ["COMMANDS", "command_module", "main"]

# command -> one-line help; the module is resnest_fast.cli.<command>
COMMANDS = {
    "info": "print what was built and which backend will run",
    "infer": "segment images: a palette PNG of class indices and an overlay per image",
    "train": "train a segmenter (mmseg's schedule; DDP under torchrun; checkpoints, resume, logs)",
    "test": "score a checkpoint on the validation split: aAcc, mIoU, mAcc, per-class IoU",
}


def command_module(name: str) -> ModuleType:
    """The module of a command, imported on demand (explicit imports, so the arrows stay readable)."""
    if name == "info":
        from resnest_fast.cli import info as module
    elif name == "infer":
        from resnest_fast.cli import infer as module
    elif name == "train":
        from resnest_fast.cli import train as module
    elif name == "test":
        from resnest_fast.cli import test as module
    else:
        raise KeyError(f"no command {name!r}; the commands are {', '.join(COMMANDS)}")
    return module


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="resnest-fast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    module = None
    for name, help_text in COMMANDS.items():
        if argv[:1] == [name]:
            module = command_module(name)
            module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__.split("\n\n")[0]))
        else:
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    return run_command(module.run_from_args, args, f"resnest-fast {args.command}")
