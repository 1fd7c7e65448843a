"""`python -m gateway.api_server`: the stack's command (FastDeploy's name); the CLI is `launcher.cli`."""

from __future__ import annotations

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
