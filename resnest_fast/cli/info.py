"""`resnest-fast info`: what was built, and which backend runs for CPU and CUDA tensors."""
import argparse
import json
import sys

from resnest_fast.cli._common import command_main
from resnest_fast.info import build_info, format_info

__all__ = ["add_arguments", "run_from_args", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "resnest-fast info") -> int:
    info = build_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def main(argv=None) -> int:
    return command_main(__doc__, add_arguments, run_from_args, "python -m resnest_fast.cli.info", argv)


if __name__ == "__main__":
    sys.exit(main())
