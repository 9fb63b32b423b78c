"""`python -m resnest_fast COMMAND`: the command line of resnest_fast.cli."""
import sys

from resnest_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
