"""`resnest-fast train`: mmseg's iteration-based training of a config's segmenter (resnest_fast.training.train).

Distributed: `torchrun --nproc-per-node N -m resnest_fast train CONFIG ...`. Exit codes: 0 done, 1 training
started and failed (the loss became NaN, a sample could not be read, a checkpoint could not be written: the
checkpoints written before are kept), 2 nothing done (bad arguments, config, data, checkpoint, or a work dir that
holds another run, is in use or cannot be written), 130 / 143 stopped by Ctrl-C / SIGTERM (one line naming the
checkpoint to resume from; nothing half-written, the work dir let go).
"""
import argparse
import sys

from resnest_fast.cli._common import (add_runtime_arguments, check_path_arguments, command_main, is_rank0, percent,
                                       print_error)
from resnest_fast.training.train import SetupError, TrainingError, train

__all__ = ["add_arguments", "run_from_args", "main"]

# the path arguments: attribute -> (name on the command line, what it expects); --resume without CKPT is True
PATH_ARGUMENTS = {"config": ("CONFIG", "a shipped config's name or a .py file"),
                  "work_dir": ("--work-dir", "a folder (leave it out for work_dirs/<config name>)"),
                  "resume": ("--resume", "a checkpoint file (or no value: the work dir's latest)"),
                  "load_from": ("--load-from", "a checkpoint file"), "data_root": ("--data-root", "a dataset folder")}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="a shipped config's name (resnest_s101-d8_..., or the synthetic one) or a "
                        ".py config file (ours, or mmseg 1.x's)")
    parser.add_argument("--work-dir", help="where checkpoints and logs go (default: work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue a run: from CKPT, or without it from the work dir's latest checkpoint")
    parser.add_argument("--load-from", metavar="CKPT", help="start from these weights (a fresh run otherwise)")
    parser.add_argument("--max-iters", type=int, help="number of iterations (default: the config's schedule)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                        help="mixed precision: bf16 autocast (CPU or CUDA) or fp16 autocast + GradScaler (CUDA)")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's runtime.seed)")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic algorithms only (bit-identical reruns and resumes)")
    parser.add_argument("--data-root", help="dataset folder (default: the config's data.root)")
    parser.add_argument("--batch-size", type=int, help="images per process (default: the config's data.batch_size)")
    parser.add_argument("--num-workers", type=int, help="data loading processes per training process")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. schedule.val_interval=500 runtime.log_interval=10; for an "
                        "mmseg config file its own keys, e.g. train_cfg.max_iters=1000 model.pretrained=None")
    add_runtime_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "resnest-fast train") -> int:
    """Exit code: 0 done, 1 training failed, 2 nothing done (bad arguments, config, data, checkpoint, work dir)."""
    try:
        check_path_arguments(args, PATH_ARGUMENTS)
        summary = train(args.config, work_dir=args.work_dir, resume=args.resume, load_from=args.load_from,
                        max_iters=args.max_iters, amp=args.amp, seed=args.seed, deterministic=args.deterministic,
                        data_root=args.data_root, batch_size=args.batch_size, num_workers=args.num_workers,
                        cfg_options=args.cfg_options, device=args.device, backend=args.backend,
                        progress=not args.no_progress)
    except (SetupError, TrainingError, argparse.ArgumentTypeError) as exc:
        print_error(prog, exc)
        return 1 if isinstance(exc, TrainingError) else 2
    if is_rank0():
        metrics = summary["metrics"]
        val = "" if not metrics else (f"; mIoU {percent(metrics['mIoU'])}, aAcc {percent(metrics['aAcc'])}, "
                                      f"mAcc {percent(metrics['mAcc'])} on {metrics['num_images']} val images")
        loss = "" if summary["loss"] is None else f", final loss {summary['loss']:.4f}"
        print(f"trained {summary['iterations']} iterations (to {summary['iter']}) in {summary['seconds']:.1f} s "
              f"({summary['it_per_s']:.2f} it/s){loss}{val}; peak memory {summary['peak_memory_mib']} MiB; "
              f"checkpoint {summary['last_checkpoint']}; log {summary['log_file']}")
    return 0


def main(argv=None) -> int:
    return command_main(__doc__, add_arguments, run_from_args, "python -m resnest_fast.cli.train", argv)


if __name__ == "__main__":
    sys.exit(main())
