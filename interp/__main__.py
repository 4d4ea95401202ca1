"""``python -m interp``: the same command line as ``interp``."""

import sys

from interp.cli import main

if __name__ == "__main__":  # spawned workers import this module under another name
    sys.exit(main())
