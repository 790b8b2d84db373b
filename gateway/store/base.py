"""The store interface: the record store (claims, leases, results) and the audit log.

Every write that changes a record is *fenced*: it names the fence the caller holds (and, for a
take-over, the state it saw) and does nothing (False / None / ``Settled.LOST``) when the record
moved on. Every failure to reach the database is raised as ``gateway.errors.StoreUnavailable``,
translated once, in the backend.

Durability: a claim and a take-over are on stable storage when they return (they precede a
call sent downstream); every other write may be lost in a power cut, which can only turn a key
``unknown`` (its claim survives, its lease dies), never make a call run twice.

Every backend passes one contract suite (``tests/store/test_contract.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from gateway.store.records import Claim, ClaimResult, Event, EventQuery, Record, Settled


class RecordStore(Protocol):
    def now(self) -> datetime:
        """The store's clock: the database's time (estimated from the last sync) on a shared
        server, so leases and retention mean the same on every replica; UTC."""

    async def sync_clock(self) -> None:
        """Re-measure the offset between this machine's clock and the store's."""

    async def open(self) -> None:
        """Create the schema if needed (safe when several replicas start at once)."""

    async def close(self) -> None: ...

    async def bind_secret(self, check: str) -> bool:
        """Remember ``check`` (see ``gateway.secret.check_value``) if the store has none; False if
        it holds another: a gateway with a different fingerprint secret must not serve it."""

    async def claim(self, claim: Claim) -> ClaimResult:
        """One atomic insert on (principal, key); on conflict, the existing record. Durable."""

    async def get(self, principal: str, key: str) -> Record | None: ...

    async def take_over(self, claim: Claim, *, expected: Record) -> Record | None:
        """Re-claim ``expected`` if it is still exactly as read (fence and state) and no live
        lease holds it at ``claim.now``: IN_PROGRESS with fence + 1, result cleared. Durable.

        Used for a record past its retention (``expired = "execute"``) and to re-send a
        forwarded key after an unknown outcome. None if someone else moved first.
        """

    async def renew(self, principal: str, key: str, fence: int, lease_expires_at: datetime) -> bool:
        """Extend the lease; False if the caller no longer holds it."""

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
        """The holder's result: IN_PROGRESS → COMPLETED, or UNKNOWN → COMPLETED when the key
        was marked unknown under this very fence meanwhile (``Settled.LATE``; the event then
        carries ``detail.settled_late``). ``event`` is written in the same transaction."""

    async def mark_unknown(
        self, principal: str, key: str, fence: int, *, event: Event, lease_dead_at: datetime | None = None
    ) -> bool:
        """IN_PROGRESS → UNKNOWN for this fence. ``lease_dead_at``: only if the lease has expired
        by then (another process judging a holder dead); None: the holder itself gives up."""

    async def release(self, principal: str, key: str, fence: int, *, event: Event | None) -> bool:
        """Delete the IN_PROGRESS record held under this fence (nothing ran), so a retry executes."""

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
        """An operator settles ``expected`` if it is still exactly as read (fence and state):
        ``result`` None deletes it (failed), else COMPLETED. None if it moved on."""

    async def purge(self, now: datetime, *, batch: int = 500) -> int:
        """End retention: delete COMPLETED records past it (or turn them into EXPIRED tombstones
        while ``tombstone_until`` lasts) and tombstones past their date. Never an IN_PROGRESS or
        UNKNOWN record. Returns rows deleted."""

    async def count_unknown(self, principal: str | None) -> int: ...


class AuditLog(Protocol):
    async def append_event(self, event: Event) -> None: ...

    async def append_events(self, events: Sequence[Event]) -> None:
        """Several events in one transaction (all or none), in order."""

    async def events(self, query: EventQuery) -> list[Event]:
        """Newest first."""

    async def outcome_counts(
        self, principal: str | None, since: datetime | None
    ) -> list[tuple[str, str, int, float]]:
        """(tool, outcome, count, sum of cost) for events at or after ``since``."""

    async def purge_events(self, before: datetime) -> int:
        """Delete audit events older than ``before`` (the audit retention). Returns rows deleted."""


class Store(RecordStore, AuditLog, Protocol):
    """What the gateway opens: both halves, on one database."""


__all__ = ["AuditLog", "RecordStore", "Store"]
