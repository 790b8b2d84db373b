"""Bounds on what one client or principal can make the gateway hold or do.

Every number here is a default an operator can change on ``serve`` (``docs/security.md`` says
which threat each one answers):

- ``RateLimiter``: a token bucket per principal for keyed calls (new keys and refusals), so one
  principal cannot fill the store or the audit trail; over it, ``rate_limited`` (429) and
  nothing is stored.
- ``check_uri``: a resource URI (``resources/read``, ``resources/subscribe``, ``subscriptions/
  listen``) is at most ``MAX_URI_LENGTH`` characters.
- ``RateLimitedLog``: a log line that an attacker (or a broken network) can trigger in a loop is
  written once per interval, with a count of the ones held back.

The HTTP-only bounds (header timeout, connection cap, sessions per principal) live in
``gateway.server.http_limits``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import RateLimited

__all__ = [
    "DEFAULT_RATE",
    "MAX_SUBSCRIPTIONS_PER_SESSION",
    "MAX_URI_LENGTH",
    "Limits",
    "Rate",
    "RateLimitedLog",
    "RateLimiter",
    "check_uri",
]

MAX_URI_LENGTH = 8192  # a generous URL; an audit key's URI is under 300
MAX_SUBSCRIPTIONS_PER_SESSION = 100
DEFAULT_RATE = "3000/m"  # a burst of 3000 new keys, then 50 a second
DEFAULT_AUDIT_RETENTION_DAYS = 90
DEFAULT_SESSIONS_PER_PRINCIPAL = 100
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT = 10.0
MAX_PRINCIPALS_TRACKED = 10_000

_RATE = re.compile(r"^([0-9]{1,9})/(s|m|h)$")
_PERIOD = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PERIOD_NAME = {"s": "second", "m": "minute", "h": "hour"}

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` calls per ``period`` seconds; the bucket holds ``count`` (the burst)."""

    count: int
    period: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """``"3000/m"`` → a rate; ``"off"`` → None. Raises ``ValueError`` with a sentence."""
        if text.strip().lower() in ("off", "none", "0"):
            return None
        match = _RATE.match(text.strip())
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"expected COUNT/UNIT (unit s, m or h), e.g. {DEFAULT_RATE}, or off")
        return cls(int(match.group(1)), _PERIOD[match.group(2)], text.strip())

    def describe(self) -> str:
        unit = next(u for u, p in _PERIOD.items() if p == self.period)
        return f"{self.count} per {_PERIOD_NAME[unit]}"


@dataclass(frozen=True, slots=True)
class Limits:
    """The knobs ``serve`` exposes; the defaults are what ``docs/security.md`` describes."""

    rate: Rate | None = Rate(3000, 60.0, DEFAULT_RATE)
    audit_retention: float | None = DEFAULT_AUDIT_RETENTION_DAYS * 86400.0  # seconds; None keeps all
    sessions_per_principal: int = DEFAULT_SESSIONS_PER_PRINCIPAL
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT


class RateLimitedLog:
    """One line per ``interval`` per kind of event, with a count of the ones held back.

    The first occurrence is written at once (an operator sees the problem start); later ones
    within the interval are counted and the count rides on the next line written.
    """

    MAX_KINDS = 1000

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        self._held: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None if ``kind`` was let through within the interval (it is counted); otherwise
        how many were held back since the last one let through."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        self._last.move_to_end(kind)
        while len(self._last) > self.MAX_KINDS:
            old, _ = self._last.popitem(last=False)
            self._held.pop(old, None)
        return held

    def suffix(self, held: int) -> str:
        return f" (and {held} more like it in the last {self.interval:g}s)" if held else ""

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``kind`` was logged within the interval; True if written."""
        held = self.allow(kind)
        if held is None:
            return False
        self.logger.log(level, message + self.suffix(held), *args)
        return True


class RateLimiter:
    """A token bucket per principal: each keyed call takes a token, tokens come back at the
    rate's pace, and a principal whose bucket is empty is refused with ``rate_limited``.

    Memory is bounded: at most ``MAX_PRINCIPALS_TRACKED`` buckets, the least recently used
    dropped first (a dropped bucket comes back full, which only forgives).
    """

    def __init__(self, rate: Rate | None, *, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._log = RateLimitedLog(logging.getLogger(__name__), interval=60.0, clock=clock)

    def take(self, principal: str) -> RateLimited | None:
        """Spend one of ``principal``'s tokens; the refusal to return if there is none."""
        rate = self.rate
        if rate is None:
            return None
        now = self.clock()
        per_second = rate.count / rate.period
        tokens, at = self._buckets.pop(principal, (float(rate.count), now))
        tokens = min(float(rate.count), tokens + (now - at) * per_second)
        if tokens >= 1.0:
            self._buckets[principal] = (tokens - 1.0, now)
            self._trim()
            return None
        self._buckets[principal] = (tokens, now)
        self._trim()
        wait = max(1, math.ceil((1.0 - tokens) / per_second))
        self._log.log(
            logging.WARNING,
            f"rate:{principal}",
            "principal %r is over its rate limit (%s): calls refused with rate_limited",
            principal,
            rate.describe(),
        )
        return RateLimited(
            f"Too many new idempotency keys or refused calls from you (at most {rate.describe()}). "
            f"Nothing was run or stored: retry this same call, with the same key, in {wait} seconds.",
            retry_after_seconds=wait,
        )

    def _trim(self) -> None:
        while len(self._buckets) > MAX_PRINCIPALS_TRACKED:
            self._buckets.popitem(last=False)


def check_uri(uri: str) -> None:
    """Refuse a resource URI longer than ``MAX_URI_LENGTH`` (a JSON-RPC invalid-params error)."""
    if len(uri) > MAX_URI_LENGTH:
        # Imported here: the CLI reads this module's defaults, and the SDK costs 1.5 s to import.
        import mcp_types as types
        from mcp.shared.exceptions import MCPError

        raise MCPError(
            code=types.INVALID_PARAMS,
            message=f"Resource URI too long ({len(uri)} characters; at most {MAX_URI_LENGTH})",
        )
