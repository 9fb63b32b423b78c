"""Command-line options the train, test and infer commands share."""
import argparse

from resnest_fast.backend import BACKENDS

__all__ = ["add_runtime_arguments"]


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend (split attention), --device and --no-progress."""
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="split-attention backend (default: RESNEST_FAST_BACKEND or auto)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
