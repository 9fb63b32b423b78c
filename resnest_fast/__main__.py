"""Command line of resnest_fast: `resnest-fast info` (also `python -m resnest_fast info`)."""
import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="resnest-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print what was built and which backend will run")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.command == "info":
        from resnest_fast.info import build_info, format_info

        info = build_info()
        print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
