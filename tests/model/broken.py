"""Deliberately broken pieces of the protocol, each a bug the explorer must catch.

Each is a list of patches (object, attribute, replacement) that ``explore`` applies for one
exploration; ``test_protocol`` asserts the violation each one leads to. Most are bugs the
issue found on main before the rebuild, put back.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.downstream.errors import DownstreamRejected
from gateway.idempotency import decide as decide_module
from gateway.idempotency import guard as guard_module
from gateway.idempotency.decide import Call, Verdict
from gateway.store import memory
from gateway.store.memory import MemoryStore
from gateway.store.records import Claim, Record, RecordState, Settled
from tests.model import world

Patches = list[tuple[Any, str, Any]]
_decide = decide_module.decide
_purge_now = MemoryStore.purge_now
_complete_now = MemoryStore.complete_now
_resolve_now = MemoryStore.resolve_now


def _retention_first(record: Record | None, call: Call, now: datetime) -> Verdict:
    """Issue 8, item 1: retention judged before the state, so a live call past its retention is
    taken over (the store's lease check still refuses while the lease lives)."""
    if record is not None and record.state is RecordState.IN_PROGRESS and record.expires_at <= now:
        return Verdict.EXPIRED if call.expired == "reject" else Verdict.TAKE_OVER
    return _decide(record, call, now)


DECIDE_TAKES_OVER_PAST_RETENTION: Patches = [(guard_module, "decide", _retention_first)]


def _unknown_expires(record: Record | None, call: Call, now: datetime) -> Verdict:
    """Issue 8, item 2: an unknown key past its retention runs again."""
    if record is not None and record.state is RecordState.UNKNOWN and record.expires_at <= now:
        return Verdict.TAKE_OVER
    return _decide(record, call, now)


DECIDE_UNKNOWN_EXPIRES: Patches = [(guard_module, "decide", _unknown_expires)]


def _purge_unknown_too(self: MemoryStore, now: datetime) -> int:
    """The sweeper deletes unknown keys past their retention."""
    deleted = 0
    for ident, r in list(self.records.items()):
        if r.state is RecordState.UNKNOWN and r.expires_at <= now:
            del self.records[ident]
            deleted += 1
    return deleted + _purge_now(self, now)


PURGE_DELETES_UNKNOWN: Patches = [(MemoryStore, "purge_now", _purge_unknown_too)]


def _take_over_ignoring_the_lease(self: MemoryStore, c: Claim, expected: Record) -> Record | None:
    """Take-over fenced on the record as read, but blind to a lease renewed since."""
    if not self._as_read(expected):
        return None
    record = memory._claimed(c, expected.fence + 1)
    self.records[(c.principal, c.key)] = record
    return record


TAKE_OVER_IGNORES_THE_LEASE: Patches = [(MemoryStore, "take_over_now", _take_over_ignoring_the_lease)]


def _mark_unknown_ignoring_the_lease(
    self: MemoryStore, principal: str, key: str, fence: int, event: Any, lease_dead_at: datetime | None = None
) -> bool:
    """A holder judged dead on the record as read, though its lease was renewed since."""
    record = self._held(principal, key, fence, RecordState.IN_PROGRESS)
    if record is None:
        return False
    self.records[(principal, key)] = replace(record, state=RecordState.UNKNOWN, lease_expires_at=None)
    return True


MARK_UNKNOWN_IGNORES_THE_LEASE: Patches = [
    (MemoryStore, "mark_unknown_now", _mark_unknown_ignoring_the_lease)
]


def _complete_unfenced(self: MemoryStore, principal: str, key: str, fence: int, **kwargs: Any) -> Settled:
    """A completion that writes whatever record is there (no fence)."""
    record = self.records.get((principal, key))
    if record is not None and record.fence != fence:
        self.records[(principal, key)] = replace(record, fence=fence, state=RecordState.IN_PROGRESS)
    return _complete_now(self, principal, key, fence, **kwargs)


COMPLETE_IGNORES_THE_FENCE: Patches = [(MemoryStore, "complete_now", _complete_unfenced)]


def _complete_in_progress_only(
    self: MemoryStore, principal: str, key: str, fence: int, **kwargs: Any
) -> Settled:
    """Issue 8, item 6: a late result is thrown away when the key was marked unknown meanwhile."""
    if self._held(principal, key, fence, RecordState.IN_PROGRESS) is None:
        return Settled.LOST
    return _complete_now(self, principal, key, fence, **kwargs)


LATE_RESULT_THROWN_AWAY: Patches = [(MemoryStore, "complete_now", _complete_in_progress_only)]


def _resolve_unfenced(
    self: MemoryStore,
    expected: Record,
    result: dict[str, Any] | None,
    is_error: bool,
    now: datetime,
    event: Any,
) -> Record | None:
    """Issue 8, item 13: resolve reads the record, then settles whatever row is there."""
    current = self.records.get((expected.principal, expected.key))
    if current is None:
        return None
    return _resolve_now(self, current, result, is_error, now, event)


RESOLVE_UNFENCED: Patches = [(MemoryStore, "resolve_now", _resolve_unfenced)]


async def _no_retry(self: Any, guard: Any) -> None:
    """Issue 8, item 5: a settling write the store refused is not retried."""
    return None


SETTLING_NOT_RETRIED: Patches = [(guard_module._Settle, "run", _no_retry)]


def _lost_is_rejected(message: str, *, reason: str, code: int | None = None) -> DownstreamRejected:
    """Issue 8, item 3: an error received after the call was sent taken for a refusal."""
    return DownstreamRejected(message, code=code or -32603)


ERROR_AFTER_SEND_RELEASES: Patches = [(world, "DownstreamLost", _lost_is_rejected)]
