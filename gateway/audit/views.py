"""Events and records as JSON objects: the one shape both the resources and the CLI print."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway import meta
from gateway.store.records import Event, Record, RecordState

UNKNOWN_NOTE = (
    "The call was sent and its outcome was never learned. This key does not expire and is never "
    "run again on its own: an operator settles it with `idem-gateway resolve` (as failed: a retry "
    "executes; as completed: a retry replays the given result)."
)


def iso(at: datetime | None) -> str | None:
    """``meta.iso`` (the format of ``first-executed-at`` on a replay), and ``None`` for no time."""
    return None if at is None else meta.iso(at)


def event_view(event: Event, *, with_principal: bool = False) -> dict[str, Any]:
    """An event; the principal is left out where the reader can only see its own."""
    out: dict[str, Any] = {"at": iso(event.at)}
    if with_principal:
        out["principal"] = event.principal
    out.update(
        key=event.key,
        server=event.server,
        tool=event.tool,
        outcome=event.outcome,
        duration_ms=event.duration_ms,
        arguments=event.arguments,  # redacted by the call path before it was stored
        fingerprint=event.fingerprint,
        cost=event.cost,
        detail=event.detail or {},
    )
    return out


def record_view(record: Record | None, *, with_principal: bool = False) -> dict[str, Any] | None:
    """A record without its lease internals (owner host and pid are nobody's business)."""
    if record is None:
        return None
    out: dict[str, Any] = {}
    if with_principal:
        out["principal"] = record.principal
    unknown = record.state is RecordState.UNKNOWN
    out.update(
        key=record.key,
        server=record.server,
        tool=record.tool,
        state=record.state.value,
        fingerprint=record.fingerprint,
        created_at=iso(record.created_at),
        first_executed_at=iso(record.first_executed_at),
        expires_at=None if unknown else iso(record.expires_at),  # unknown never expires
        result=record.result,
        is_error=record.is_error,
    )
    if unknown:
        out["note"] = UNKNOWN_NOTE
    return out


def dumps(body: Any) -> str:
    """Deterministic JSON: the same state always reads as the same bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
