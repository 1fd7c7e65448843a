"""`python -m launcher` (or the `paddlellm-serve` console script): the stack's command."""

from __future__ import annotations

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
