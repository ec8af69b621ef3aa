"""`python -m memtest.zoo ...` (the same as `memtest zoo ...`)."""

from __future__ import annotations

import sys

from memtest.zoo.cli import main as zoo_main

if __name__ == "__main__":
    sys.exit(zoo_main(sys.argv[1:]))
