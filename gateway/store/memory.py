"""``MemoryStore``: the ``Store`` contract in process memory, for unit tests and the model checker.

It passes the same contract suite as the SQL store (``tests/store/test_contract.py``), so what
the model checker (``tests/model``) proves about the protocol over this store holds for the
conditions the SQL store writes in SQL. Each write is a synchronous step (``*_now`` methods),
which is what lets the checker interleave them one at a time; the async methods are the
``Store`` protocol over them. Nothing is durable: it is never a production store.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gateway.store.records import Claim, ClaimResult, Event, EventQuery, Record, RecordState, Settled, late

IN_PROGRESS = RecordState.IN_PROGRESS
COMPLETED = RecordState.COMPLETED
UNKNOWN = RecordState.UNKNOWN
EXPIRED = RecordState.EXPIRED


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryStore:
    """Records keyed by (principal, key) and an append-only event list."""

    def __init__(
        self, clock: Callable[[], datetime] = _utcnow, fences: Callable[[], int] | None = None
    ) -> None:
        self.records: dict[tuple[str, str], Record] = {}
        self.log: list[Event] = []
        self.secret_check: str | None = None
        self._clock = clock
        self._fences = fences or (lambda: secrets.randbits(62) + 1)

    # ---- lifecycle --------------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    async def sync_clock(self) -> None:
        return None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def bind_secret(self, check: str) -> bool:
        if self.secret_check is None:
            self.secret_check = check
        return self.secret_check == check

    # ---- synchronous steps (what the model checker interleaves) -------------------------------

    def claim_now(self, c: Claim) -> ClaimResult:
        ident = (c.principal, c.key)
        found = self.records.get(ident)
        if found is not None:
            return ClaimResult(acquired=False, record=found)
        record = _claimed(c, self._fences())
        self.records[ident] = record
        return ClaimResult(acquired=True, record=record)

    def take_over_now(self, c: Claim, expected: Record) -> Record | None:
        ident = (c.principal, c.key)
        if not self._as_read(expected) or _lease_alive(self.records[ident], c.now):
            return None
        record = _claimed(c, expected.fence + 1)
        self.records[ident] = record
        return record

    def renew_now(self, principal: str, key: str, fence: int, until: datetime) -> bool:
        record = self._held(principal, key, fence, IN_PROGRESS)
        if record is None:
            return False
        self.records[(principal, key)] = replace(record, lease_expires_at=until)
        return True

    def complete_now(
        self,
        principal: str,
        key: str,
        fence: int,
        *,
        result: dict[str, Any],
        is_error: bool,
        executed_at: datetime,
        expires_at: datetime,
        tombstone_until: datetime | None,
        event: Event,
    ) -> Settled:
        for state, settled in ((IN_PROGRESS, Settled.COMPLETED), (UNKNOWN, Settled.LATE)):
            record = self._held(principal, key, fence, state)
            if record is None:
                continue
            self.records[(principal, key)] = replace(
                record,
                state=COMPLETED,
                result=result,
                is_error=is_error,
                first_executed_at=executed_at,
                expires_at=expires_at,
                tombstone_until=tombstone_until,
                lease_expires_at=None,
            )
            self.log.append(event if settled is Settled.COMPLETED else late(event, self.now()))
            return settled
        return Settled.LOST

    def mark_unknown_now(
        self, principal: str, key: str, fence: int, event: Event, lease_dead_at: datetime | None = None
    ) -> bool:
        record = self._held(principal, key, fence, IN_PROGRESS)
        if record is None or (lease_dead_at is not None and _lease_alive(record, lease_dead_at)):
            return False
        self.records[(principal, key)] = replace(record, state=UNKNOWN, lease_expires_at=None)
        self.log.append(event)
        return True

    def release_now(self, principal: str, key: str, fence: int, event: Event | None) -> bool:
        if self._held(principal, key, fence, IN_PROGRESS) is None:
            return False
        del self.records[(principal, key)]
        if event is not None:
            self.log.append(event)
        return True

    def resolve_now(
        self, expected: Record, result: dict[str, Any] | None, is_error: bool, now: datetime, event: Event
    ) -> Record | None:
        if not self._as_read(expected):
            return None
        ident = (expected.principal, expected.key)
        self.log.append(event)
        if result is None:
            del self.records[ident]
            return expected
        expires_at = now + (expected.expires_at - expected.created_at)
        tombstone = (
            None
            if expected.tombstone_until is None
            else expires_at + (expected.tombstone_until - expected.expires_at)
        )
        record = replace(
            expected,
            state=COMPLETED,
            result=result,
            is_error=is_error,
            first_executed_at=expected.first_executed_at or now,
            lease_expires_at=None,
            expires_at=expires_at,
            tombstone_until=tombstone,
        )
        self.records[ident] = record
        return record

    def purge_now(self, now: datetime) -> int:
        deleted = 0
        for ident, r in list(self.records.items()):
            tombstone_over = r.tombstone_until is None or r.tombstone_until <= now
            if r.state is COMPLETED and r.expires_at <= now:
                if tombstone_over:
                    del self.records[ident]
                    deleted += 1
                else:
                    self.records[ident] = replace(
                        r, state=EXPIRED, result=None, is_error=False, lease_owner=None, lease_expires_at=None
                    )
            elif r.state is EXPIRED and tombstone_over:
                del self.records[ident]
                deleted += 1
        return deleted

    def _held(self, principal: str, key: str, fence: int, state: RecordState) -> Record | None:
        record = self.records.get((principal, key))
        return record if record is not None and record.fence == fence and record.state is state else None

    def _as_read(self, expected: Record) -> bool:
        record = self.records.get((expected.principal, expected.key))
        return record is not None and record.fence == expected.fence and record.state is expected.state

    # ---- the Store protocol -----------------------------------------------------------------

    async def claim(self, claim: Claim) -> ClaimResult:
        return self.claim_now(claim)

    async def get(self, principal: str, key: str) -> Record | None:
        return self.records.get((principal, key))

    async def take_over(self, claim: Claim, *, expected: Record) -> Record | None:
        return self.take_over_now(claim, expected)

    async def renew(self, principal: str, key: str, fence: int, lease_expires_at: datetime) -> bool:
        return self.renew_now(principal, key, fence, lease_expires_at)

    async def complete(
        self,
        principal: str,
        key: str,
        fence: int,
        *,
        result: dict[str, Any],
        is_error: bool,
        executed_at: datetime,
        expires_at: datetime,
        tombstone_until: datetime | None,
        event: Event,
    ) -> Settled:
        return self.complete_now(
            principal,
            key,
            fence,
            result=result,
            is_error=is_error,
            executed_at=executed_at,
            expires_at=expires_at,
            tombstone_until=tombstone_until,
            event=event,
        )

    async def mark_unknown(
        self, principal: str, key: str, fence: int, *, event: Event, lease_dead_at: datetime | None = None
    ) -> bool:
        return self.mark_unknown_now(principal, key, fence, event, lease_dead_at)

    async def release(self, principal: str, key: str, fence: int, *, event: Event | None) -> bool:
        return self.release_now(principal, key, fence, event)

    async def resolve(
        self,
        principal: str,
        key: str,
        *,
        expected: Record,
        result: dict[str, Any] | None,
        is_error: bool,
        now: datetime,
        event: Event,
    ) -> Record | None:
        return self.resolve_now(expected, result, is_error, now, event)

    async def purge(self, now: datetime, *, batch: int = 500) -> int:
        return self.purge_now(now)

    async def count_unknown(self, principal: str | None) -> int:
        return sum(
            1 for r in self.records.values() if r.state is UNKNOWN and principal in (None, r.principal)
        )

    async def append_event(self, event: Event) -> None:
        self.log.append(event)

    async def append_events(self, events: Sequence[Event]) -> None:
        self.log.extend(events)

    async def events(self, query: EventQuery) -> list[Event]:
        found = [
            e
            for e in self.log
            if (query.principal is None or e.principal == query.principal)
            and (query.key is None or e.key == query.key)
            and (query.tool is None or e.tool == query.tool)
            and (query.outcome is None or e.outcome == query.outcome)
            and (query.since is None or e.at >= query.since)
        ]
        ordered = sorted(enumerate(found), key=lambda pair: (pair[1].at, pair[0]), reverse=True)
        return [replace(e, id=i + 1) for i, e in ordered[: query.limit]]

    async def outcome_counts(
        self, principal: str | None, since: datetime | None
    ) -> list[tuple[str, str, int, float]]:
        counts: dict[tuple[str, str], tuple[int, float]] = {}
        for e in self.log:
            if (principal is None or e.principal == principal) and (since is None or e.at >= since):
                n, cost = counts.get((e.tool, e.outcome), (0, 0.0))
                counts[(e.tool, e.outcome)] = (n + 1, cost + (e.cost or 0.0))
        return [(tool, outcome, n, cost) for (tool, outcome), (n, cost) in sorted(counts.items())]

    async def purge_events(self, before: datetime) -> int:
        kept = [e for e in self.log if e.at >= before]
        dropped = len(self.log) - len(kept)
        self.log[:] = kept
        return dropped


def _lease_alive(record: Record, now: datetime) -> bool:
    return record.lease_expires_at is not None and record.lease_expires_at > now


def _claimed(c: Claim, fence: int) -> Record:
    return Record(
        principal=c.principal,
        key=c.key,
        server=c.server,
        tool=c.tool,
        fingerprint=c.fingerprint,
        state=IN_PROGRESS,
        fence=fence,
        lease_owner=c.owner,
        lease_expires_at=c.lease_expires_at,
        created_at=c.now,
        expires_at=c.expires_at,
        tombstone_until=c.tombstone_until,
    )
