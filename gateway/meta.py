"""The ``_meta`` keys the gateway owns, and the one place results are stamped with them.

Everything the gateway adds to a result lives under ``idem-gateway/``; a downstream may not
set those keys (they are stripped from what it sends), so a label such as the outcome is always
the gateway's word.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

PREFIX: Final = "idem-gateway/"
OUTCOME: Final = PREFIX + "outcome"  # "executed" | "replayed"
FIRST_EXECUTED_AT: Final = PREFIX + "first-executed-at"  # ISO 8601, on a replay
ERROR: Final = PREFIX + "error"  # {"code", "http_status", "message", ...} on a refusal
IDEMPOTENCY_KEY: Final = PREFIX + "idempotency-key"  # a programmatic client's key, in params._meta
HTTP_STATUS: Final = PREFIX + "http-status"  # an OpenAPI downstream's HTTP status


def iso(at: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def outcome_of(meta: Mapping[str, Any] | None) -> str | None:
    """What the gateway stamped on a result: its outcome (``executed``, ``replayed``) or a refusal's
    code; ``None`` on a result it did not stamp (a read-only call's)."""
    if not isinstance(meta, Mapping):
        return None
    error = meta.get(ERROR)
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        return str(error["code"])
    outcome = meta.get(OUTCOME)
    return outcome if isinstance(outcome, str) else None


def stamped(result: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of ``result`` whose ``_meta`` carries ``fields`` under the gateway's prefix
    (``first_executed_at`` → ``idem-gateway/first-executed-at``)."""
    out = dict(result)
    meta = dict(out.get("_meta") or {})
    for name, value in fields.items():
        meta[PREFIX + name.replace("_", "-")] = value
    out["_meta"] = meta
    return out


def strip_ours(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` without keys in the gateway's namespace (a downstream cannot forge them)."""
    return {k: v for k, v in meta.items() if not k.startswith(PREFIX)}
