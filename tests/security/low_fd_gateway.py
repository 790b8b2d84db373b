"""``idem-gateway`` under a low descriptor limit, its client-triggered log limits observable.

Run as a script (``python low_fd_gateway.py LIMIT ARGS...``, ARGS as for ``idem-gateway``) by
``test_http_limits.py``. Before the CLI starts it

- sets ``RLIMIT_NOFILE`` (soft and hard) to LIMIT;
- installs the log rate limits itself, with an ``INTERVAL`` long enough that no line is
  released by the wall clock during a test, and a clock that SIGUSR1 turns one interval
  forward (``serve`` keeps a limiter already installed);
- puts a tally in front of the limiter: every accept failure that reaches it writes
  ``TALLY`` to stderr first, so the test counts the failures, not just the lines let through.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import time

from gateway.cli import main
from gateway.server.http_limits import install_log_rate_limits

INTERVAL = 3600.0
TALLY = "tally: an accept failure reached the log limiter"
ACCEPT_FAILED = "socket.accept() out of system resource"


class Tally(logging.Filter):
    """Writes ``TALLY`` for each accept failure logged (stderr is already open: no descriptor)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(ACCEPT_FAILED):
            sys.stderr.write(TALLY + "\n")
            sys.stderr.flush()
        return True


class SteppedClock:
    """Monotonic time plus one ``INTERVAL`` per SIGUSR1 received."""

    def __init__(self) -> None:
        self.offset = 0.0
        signal.signal(signal.SIGUSR1, self.step)

    def step(self, signum: int, frame: object) -> None:
        self.offset += INTERVAL

    def __call__(self) -> float:
        return time.monotonic() + self.offset


if __name__ == "__main__":
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    logging.getLogger("asyncio").addFilter(Tally())  # before the limiter: filters run in order
    install_log_rate_limits(INTERVAL, SteppedClock())
    raise SystemExit(main(sys.argv[2:]))
