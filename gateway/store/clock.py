"""The store's clock: this machine's UTC time corrected by a measured offset to the database's.

Leases and retention are compared across processes. On one machine (SQLite) they share a
clock; replicas on a shared database may not: a replica 12 s ahead would see every live lease
as dead. So a shared store measures the database's time now and then (``sync``) and every
decision uses ``now() = local + offset``. The offset's uncertainty is half the round trip of
the measuring query, and a measurement less sure than ``MAX_UNCERTAINTY`` is discarded unless it
is surer than the one in use (so the first is taken, and then replaced by a sure one): a process
paused between sending the query and reading its answer (SIGSTOP, a stalled store, a swapped-out
VM) would otherwise take half the pause as the clocks' difference, and a clock seconds off sees
live leases as dead and retention over early. The correction is logged when the local clock is
off by more than ``WARN_SKEW`` (the operator should fix NTP, but nothing breaks).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta

logger = logging.getLogger(__name__)

WARN_SKEW = 1.0  # seconds of clock difference worth a warning
# Seconds: a measurement less sure than this is discarded. A round trip of a trivial query is a
# millisecond or so; a tenth of a second is far from the leases' seconds and well above load.
MAX_UNCERTAINTY = 0.1


class StoreClock:
    """``now()`` in the store's time; ``observe`` feeds it one measurement."""

    def __init__(self) -> None:
        self.offset = 0.0  # seconds to add to this machine's clock
        self.uncertainty = math.inf  # of the measurement the offset comes from (none yet)
        self._warned_skew = False
        self._warned_unsure = False

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    @staticmethod
    def local() -> float:
        return time.time()

    def observe(self, sent: float, store_time: float, received: float) -> None:
        """One measurement: the store said ``store_time`` between local ``sent`` and ``received``."""
        uncertainty = max(0.0, (received - sent) / 2)
        if uncertainty > MAX_UNCERTAINTY and uncertainty >= self.uncertainty:
            if not self._warned_unsure:
                logger.warning(
                    "the database's time was measured with +/- %.3fs uncertainty: measurement "
                    "discarded, the clock offset stays %.3fs",
                    uncertainty,
                    self.offset,
                )
            self._warned_unsure = True
            return
        self._warned_unsure = False
        offset = store_time - (sent + received) / 2
        self.uncertainty = uncertainty
        skewed = abs(offset) > WARN_SKEW
        if skewed and not self._warned_skew:
            logger.warning(
                "this machine's clock is %.3fs %s the database's; leases and retention use the "
                "database's time (fix NTP on this host)",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )
        self._warned_skew = skewed
        self.offset = offset
