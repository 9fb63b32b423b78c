"""Command line of resnest_fast: `resnest-fast info` (also `python -m resnest_fast info`),
`resnest-fast infer CONFIG CHECKPOINT INPUT... --out-dir DIR` (segment images; see resnest_fast.training.infer),
`resnest-fast train CONFIG [...]` (train a segmenter; resnest_fast.training.train) and
`resnest-fast test CONFIG CHECKPOINT [...]` (score it on the validation split; resnest_fast.training.evaluate)."""
import argparse
import importlib
import json
import sys

# subcommand -> (module of resnest_fast.training, help); the segmentation side (models, data) is imported only
# when its command runs
_TRAINING_COMMANDS = {
    "infer": ("infer", "segment images: a palette PNG of class indices and an overlay per image"),
    "train": ("train", "train a segmenter (mmseg's schedule; DDP under torchrun; checkpoints, resume, logs)"),
    "test": ("evaluate", "score a checkpoint on the validation split: aAcc, mIoU, mAcc, per-class IoU"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="resnest-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print what was built and which backend will run")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    argv = sys.argv[1:] if argv is None else list(argv)
    module = None
    for name, (module_name, help_text) in _TRAINING_COMMANDS.items():
        if argv[:1] == [name]:
            module = importlib.import_module(f"resnest_fast.training.{module_name}")
            module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__.split("\n\n")[0]))
        else:
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    if args.command == "info":
        from resnest_fast.info import build_info, format_info

        info = build_info()
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return 0
    return module.run_from_args(args, prog=f"resnest-fast {args.command}")


if __name__ == "__main__":
    sys.exit(main())
