"""The store's vocabulary: records, events and the states a record moves through.

The transitions between states are decided in one place, ``gateway.idempotency.guard``;
the store only applies them atomically (and fenced).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


class RecordState(enum.StrEnum):
    """Where a key stands.

    IN_PROGRESS ─complete→ COMPLETED ─retention ends→ (deleted, or EXPIRED tombstone)
        │ ├─release (not sent / rejected before execution / error not stored)→ (deleted)
        │ └─timeout, lost connection, error after sending, dead lease holder→ UNKNOWN
        │                                     UNKNOWN ─the holder's late result→ COMPLETED
        │                                     UNKNOWN ─resolve→ COMPLETED | (deleted)
        └─take over (expired COMPLETED, forwarded-key re-send)→ IN_PROGRESS, fence + 1

    UNKNOWN never expires: neither retention nor purge ends it, only a settlement does.
    """

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"  # tombstone: result dropped, kept so a retry can be refused


@dataclass(frozen=True, slots=True)
class Record:
    principal: str
    key: str
    server: str
    tool: str
    fingerprint: str
    state: RecordState
    fence: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    expires_at: datetime
    tombstone_until: datetime | None = None
    first_executed_at: datetime | None = None
    result: dict[str, Any] | None = None  # the CallToolResult exactly as the downstream sent it
    is_error: bool = False


class Settled(enum.StrEnum):
    """What a holder's completion did."""

    COMPLETED = "completed"  # IN_PROGRESS → COMPLETED: the normal case
    LATE = "settled_late"  # UNKNOWN → COMPLETED under the holder's own fence (it came back in time)
    LOST = "lost"  # the key moved on (taken over, resolved, released): nothing written


@dataclass(frozen=True, slots=True)
class Claim:
    """What a caller asks for when it claims a key."""

    principal: str
    key: str
    server: str
    tool: str
    fingerprint: str
    owner: str
    now: datetime
    lease_expires_at: datetime
    expires_at: datetime
    tombstone_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """``acquired``: this caller holds the lease on ``record`` (its fence is ours).

    Otherwise ``record`` is the existing record, as read right after the failed insert.
    """

    acquired: bool
    record: Record


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event: a decision on a side-effecting call."""

    at: datetime
    principal: str
    key: str | None
    server: str
    tool: str
    outcome: str
    fingerprint: str | None = None
    duration_ms: float | None = None
    arguments: dict[str, Any] | None = None  # already redacted
    detail: dict[str, Any] = field(default_factory=dict)
    cost: float | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    principal: str | None = None  # None = every principal (operators only)
    key: str | None = None
    tool: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    limit: int = 100


def late(event: Event, now: datetime) -> Event:
    """The completion event of a result that settled an unknown key (its holder came back):
    dated when it settled, after the ``unknown`` event it answers."""
    return replace(event, at=max(event.at, now), detail={**event.detail, "settled_late": True})
