"""Completed records kept in process, so that a replay costs no store round trip.

A COMPLETED record does not change until its retention ends: no state leads back from it (see
``RecordState``), and the sweeper only deletes it past ``expires_at``, which ``decide`` checks
on every use. The one exception is an operator's ``resolve --force`` on a completed key, made
in another process; running gateways learn of it when their entry ages out (``ttl``), and until
then replay the result they held, which is the safe direction: a replay never runs anything.

The guard answers a retry from here only when ``decide`` on the cached record says REPLAY or
CONFLICT; any other verdict goes to the store. Entries are keyed by (principal, key), so a
replay stays scoped to its principal, and they hold the result as JSON text: each replay gets
its own copy, which nothing downstream of the guard can alter for the next one. Bounded in
entries and in bytes, least recently used first out; a result larger than ``max_entry`` is not
kept (its replays read the store).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.store.records import Record, RecordState

TTL = 60.0  # seconds an entry is trusted (see the module doc: a forced resolve elsewhere)
MAX_BYTES = 16 * 1024 * 1024
MAX_ENTRY = 256 * 1024


@dataclass(frozen=True, slots=True)
class _Entry:
    record: Record  # without its result
    result: str  # the result, as JSON text
    until: float  # by the cache's monotonic clock


class ReplayCache:
    """(principal, key) → the COMPLETED record, as this process last wrote or read it."""

    def __init__(
        self,
        *,
        ttl: float = TTL,
        max_bytes: int = MAX_BYTES,
        max_entry: int = MAX_ENTRY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.monotonic = monotonic
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, principal: str, key: str) -> Record | None:
        """The record with a fresh copy of its result, or None (not held, or aged out)."""
        ident = (principal, key)
        entry = self._entries.get(ident)
        if entry is None:
            return None
        if self.monotonic() >= entry.until:
            self._drop(ident)
            return None
        self._entries.move_to_end(ident)
        return replace(entry.record, result=json.loads(entry.result))

    def put(self, record: Record) -> None:
        """Keep a COMPLETED record (anything else is ignored: only a completed one is immutable)."""
        if record.state is not RecordState.COMPLETED or record.result is None:
            return
        ident = (record.principal, record.key)
        held = self._entries.get(ident)
        if held is not None and held.record.fence == record.fence:
            return  # already held; its age stands (a replay does not renew the entry's trust)
        text = json.dumps(record.result, separators=(",", ":"), ensure_ascii=False)
        self._drop(ident)
        if len(text) > self.max_entry:
            return
        self._entries[ident] = _Entry(replace(record, result=None), text, self.monotonic() + self.ttl)
        self._bytes += len(text)
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, ident: tuple[str, str]) -> None:
        entry = self._entries.pop(ident, None)
        if entry is not None:
            self._bytes -= len(entry.result)
