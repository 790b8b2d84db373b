"""The store interface: a handful of atomic primitives every backend implements.

Every write that changes a record is *fenced*: it names the fence number the caller holds and
does nothing (returns False/None) when the record moved on. Every failure to reach the
database is raised as ``gateway.errors.StoreUnavailable`` (translated once, in the backend).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from gateway.store.records import Claim, ClaimResult, Event, EventQuery, Record


class Store(Protocol):
    async def open(self) -> None:
        """Create the schema if needed (safe when several replicas start at once)."""

    async def close(self) -> None: ...

    async def claim(self, claim: Claim) -> ClaimResult:
        """One atomic insert on (principal, key); on conflict, read the existing record."""

    async def get(self, principal: str, key: str) -> Record | None: ...

    async def take_over(self, claim: Claim, *, expected_fence: int) -> Record | None:
        """Re-claim an existing record whose fence is still ``expected_fence``.

        Used for an expired record (``expired = "execute"``) and for re-sending a forwarded key
        after an unknown outcome. The new record is IN_PROGRESS with fence + 1, held by
        ``claim.owner``; its result is cleared. None if someone else moved first.
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
        event: Event,
    ) -> bool:
        """IN_PROGRESS → COMPLETED, only for the live holder; writes ``event`` in the same transaction."""

    async def mark_unknown(self, principal: str, key: str, fence: int, *, event: Event) -> bool:
        """IN_PROGRESS → UNKNOWN for this fence (the holder lost track, or its lease is dead)."""

    async def release(self, principal: str, key: str, fence: int, *, event: Event | None) -> bool:
        """Delete the record held under this fence, so a retry executes."""

    async def resolve(
        self,
        principal: str,
        key: str,
        *,
        result: dict[str, Any] | None,
        is_error: bool,
        now: datetime,
        event: Event,
    ) -> Record | None:
        """An operator settles a record: ``result`` None deletes it (failed), else COMPLETED."""

    async def append_event(self, event: Event) -> None: ...

    async def events(self, query: EventQuery) -> list[Event]:
        """Newest first."""

    async def outcome_counts(
        self, principal: str | None, since: datetime | None
    ) -> list[tuple[str, str, int, float]]:
        """(tool, outcome, count, sum of cost) for events at or after ``since``."""

    async def count_unknown(self, principal: str | None) -> int: ...

    async def purge(self, now: datetime, *, batch: int = 500) -> int:
        """Delete expired records (tombstones past their date), turn expired rejecting records
        into tombstones; in batches. Returns rows deleted."""
