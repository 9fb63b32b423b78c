"""Command line of resnest_fast: `resnest-fast info` (also `python -m resnest_fast info`) and
`resnest-fast infer CONFIG CHECKPOINT INPUT... --out-dir DIR` (segment images; see resnest_fast.training.infer)."""
import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="resnest-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print what was built and which backend will run")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["infer"]:  # the segmentation side (models, data) is imported only when it is needed
        from resnest_fast.training import infer

        infer.add_arguments(sub.add_parser(
            "infer", help="segment images: a palette PNG of class indices and an overlay per image",
            description=infer.__doc__.split("\n\n")[0]))
    else:
        sub.add_parser("infer", help="segment images: a palette PNG of class indices and an overlay per image")
    args = parser.parse_args(argv)
    if args.command == "info":
        from resnest_fast.info import build_info, format_info

        info = build_info()
        print(json.dumps(info, indent=2) if args.json else format_info(info))
    elif args.command == "infer":
        return infer.run_from_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
