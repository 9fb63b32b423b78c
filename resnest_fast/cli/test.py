"""`resnest-fast test`: a checkpoint scored on its config's validation split (resnest_fast.training.evaluate):
aAcc, mIoU, mAcc and per-class IoU, whole or sliding-window, optionally multi-scale + flip TTA.

Exit codes: 0 done, 1 the metrics were computed and printed but --out could not be written (e.g. a full disk),
2 nothing done (bad arguments, config, checkpoint or data: an unreadable or mismatched validation file is named),
130 / 143 stopped by Ctrl-C / SIGTERM.
"""
import argparse
import sys

from resnest_fast.cli._common import (add_runtime_arguments, check_path_arguments, command_main, is_rank0, percent,
                                       print_error)
from resnest_fast.training.evaluate import run
from resnest_fast.training.errors import SetupError

__all__ = ["add_arguments", "run_from_args", "main"]

# the path arguments: attribute -> (name on the command line, what it expects)
PATH_ARGUMENTS = {"config": ("CONFIG", "a shipped config's name or a .py file"),
                  "checkpoint": ("CHECKPOINT", "a checkpoint file"), "data_root": ("--data-root", "a dataset folder"),
                  "out": ("--out", "a JSON file to write")}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="a shipped config's name or a .py config file (ours with `data`, or "
                        "mmseg 1.x's)")
    parser.add_argument("checkpoint", help="checkpoint file (ours, mmseg's format or a state_dict)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None,
                        help="whole-image or sliding-window inference (default: the config's test_cfg)")
    parser.add_argument("--crop-size", nargs=2, type=int, metavar=("H", "W"),
                        help="slide window (default: the config's test_cfg crop_size, else its training crop)")
    parser.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"),
                        help="slide stride (default: the config's with its own window, else 2/3 of the window)")
    parser.add_argument("--tta", action="store_true",
                        help="multi-scale (the config's data.tta_ratios of the original size) + flip test-time "
                        "augmentation, probabilities averaged (mmseg's SegTTAModel)")
    parser.add_argument("--data-root", help="dataset folder (default: the config's data.root)")
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--num-workers", type=int, default=None, help="data loading processes (default: the config's)")
    add_runtime_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "resnest-fast test") -> int:
    """Exit code: 0 done, 1 --out not written, 2 nothing done (bad arguments, config, checkpoint or data)."""
    try:
        check_path_arguments(args, PATH_ARGUMENTS)
        summary = run(args.config, args.checkpoint, mode=args.mode, crop_size=args.crop_size, stride=args.stride,
                      tta=args.tta, data_root=args.data_root, out=args.out, overwrite=args.overwrite,
                      num_workers=args.num_workers, backend=args.backend, device=args.device,
                      progress=not args.no_progress)
    except (SetupError, argparse.ArgumentTypeError) as exc:
        print_error(prog, exc)
        return 2
    except OSError as exc:  # --out could not be written after the evaluation (full disk): the table was printed
        print_error(prog, exc)
        return 1
    if is_rank0():
        tta = f" + TTA (ratios {summary['tta_ratios']}, flip)" if summary["tta"] else ""
        print(f"{summary['config']}: aAcc {percent(summary['aAcc'])}  mIoU {percent(summary['mIoU'])}  "
              f"mAcc {percent(summary['mAcc'])} on {summary['num_images']} images ({summary['mode']}{tta}; "
              f"{summary['seconds']:.1f} s)" + (f"; metrics in {args.out}" if args.out else ""))
    return 0


def main(argv=None) -> int:
    return command_main(__doc__, add_arguments, run_from_args, "python -m resnest_fast.cli.test", argv)


if __name__ == "__main__":
    sys.exit(main())
