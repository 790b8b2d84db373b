"""The store's clock: this machine's UTC time corrected by a measured offset to the database's.

Leases and retention are compared across processes. On one machine (SQLite) they share a
clock; replicas on a shared database may not: a replica 12 s ahead would see every live lease
as dead. So a shared store measures the database's time now and then (``sync``) and every
decision uses ``now() = local + offset``. The offset's uncertainty is half the round trip of
the measuring query; it is logged when it is large, and the correction is logged when the
local clock is off by more than ``WARN_SKEW`` (the operator should fix NTP, but nothing breaks).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

logger = logging.getLogger(__name__)

WARN_SKEW = 1.0  # seconds of clock difference worth a warning
WARN_UNCERTAINTY = 0.5  # seconds: a measurement this unsure is worth a warning too


class StoreClock:
    """``now()`` in the store's time; ``observe`` feeds it one measurement."""

    def __init__(self) -> None:
        self.offset = 0.0  # seconds to add to this machine's clock
        self.uncertainty = 0.0
        self._warned_skew = False

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    @staticmethod
    def local() -> float:
        return time.time()

    def observe(self, sent: float, store_time: float, received: float) -> None:
        """One measurement: the store said ``store_time`` between local ``sent`` and ``received``."""
        offset = store_time - (sent + received) / 2
        self.uncertainty = max(0.0, (received - sent) / 2)
        skewed = abs(offset) > WARN_SKEW
        if skewed and not self._warned_skew:
            logger.warning(
                "this machine's clock is %.3fs %s the database's; leases and retention use the "
                "database's time (fix NTP on this host)",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )
        self._warned_skew = skewed
        if self.uncertainty > WARN_UNCERTAINTY:
            logger.warning("the database's time was measured with +/- %.3fs uncertainty", self.uncertainty)
        self.offset = offset
