"""Starts the example server the way a test needs to watch it start.

    python launcher.py MARKER BLOCK GATE SERVER

Appends its pid to MARKER (one line per start). While the file BLOCK exists, it then waits
(bounded) until the file GATE exists: a downstream whose (re)start hangs. Then it becomes
SERVER (exec keeps the pid, stdin and stdout).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

LIMIT_SECONDS = 120.0


def main() -> None:
    marker, block, gate, server = (Path(a) for a in sys.argv[1:5])
    with marker.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if block.exists():
        deadline = time.monotonic() + LIMIT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    os.execv(sys.executable, [sys.executable, str(server)])


if __name__ == "__main__":
    main()
