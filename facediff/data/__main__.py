"""``python -m facediff.data ROOT [--layout auto|utkface|folder]``: audit a dataset folder."""

import sys

from facediff.data.audit import main

if __name__ == "__main__":
    sys.exit(main())
