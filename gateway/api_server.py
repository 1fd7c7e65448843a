"""`python -m gateway.api_server`: the stack's command under FastDeploy's name, kept for its users.

The stack is started by the launcher, which sits above the gateway (it builds the gateway's settings and
starts its workers). Importing it from here would make gateway and launcher a cycle, so this module replaces
its own process with `python -m launcher` and the same arguments: same pid, so signals (Ctrl-C, SIGTERM)
and exit codes are the launcher's.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.execv(sys.executable, [sys.executable, "-m", "launcher", *sys.argv[1:]])


if __name__ == "__main__":
    main()
