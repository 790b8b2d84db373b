"""Starts the example server the way a test needs to watch it start.

    python launcher.py MARKER BLOCK GATE SERVER

Appends its pid to MARKER (one line per start). While the file BLOCK exists, it then waits
(bounded) until the file GATE exists: a downstream whose (re)start hangs. Then it becomes
SERVER (exec keeps the pid, stdin and stdout).

With ``LAUNCHER_HOLD_STDOUT=PREFIX`` in its environment it first forks a helper that keeps the
server's stdout open, and only that, until the file ``PREFIX-<server pid>`` exists (bounded):
when the server dies, its stdin is closed (a write to it fails) while the gateway reading its
stdout sees no end yet, the way a helper process that inherited stdout keeps it open.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

LIMIT_SECONDS = 120.0


def hold_stdout(prefix: str) -> None:
    server = os.getpid()
    if os.fork() != 0:
        return
    try:  # the helper
        os.close(0)
        release = Path(f"{prefix}-{server}")
        deadline = time.monotonic() + LIMIT_SECONDS
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os._exit(0)


def main() -> None:
    marker, block, gate, server = (Path(a) for a in sys.argv[1:5])
    if os.environ.get("LAUNCHER_HOLD_STDOUT"):
        hold_stdout(os.environ["LAUNCHER_HOLD_STDOUT"])
    with marker.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if block.exists():
        deadline = time.monotonic() + LIMIT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    os.execv(sys.executable, [sys.executable, str(server)])


if __name__ == "__main__":
    main()
