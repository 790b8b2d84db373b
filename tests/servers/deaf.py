"""Runs a stdio MCP server and keeps ``notifications/cancelled`` from reaching it.

    python deaf.py COMMAND [ARG ...]

A downstream that ignores cancellation (MCP makes it advisory): a call the gateway gave up on
(its timeout, a forwarded cancellation) still runs, so a test that needs the call to have
started can wait for it instead of hoping it started before the gateway's timer fired. Every
other line goes through unchanged; the server's stdout and stderr are this process's own.
"""

from __future__ import annotations

import json
import subprocess
import sys


def cancels(line: bytes) -> bool:
    try:
        message = json.loads(line)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("method") == "notifications/cancelled"


def main() -> int:
    server = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE)
    assert server.stdin is not None
    try:
        for line in sys.stdin.buffer:
            if not cancels(line):
                server.stdin.write(line)
                server.stdin.flush()
    except BrokenPipeError:
        pass
    finally:
        try:
            server.stdin.close()
        except BrokenPipeError:
            pass
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
