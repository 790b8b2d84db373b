"""The outcomes an audit event records: one vocabulary for the guard, the store, the audit views
and the metrics."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    EXECUTED = "executed"  # sent downstream and a result came back (stored, or released per store_errors)
    REPLAYED = "replayed"  # a retry (or a waiting duplicate) got the stored result: a duplicate prevented
    CONFLICT = "conflict"  # the key was used for another tool or other arguments
    IN_PROGRESS = "in_progress"  # a call with this key was running and the wait ran out
    UNKNOWN = "unknown"  # sent, outcome never learned (or a retry of such a key)
    MISSING_KEY = "missing_key"
    INVALID = "invalid"  # a bad key or bad arguments, or the downstream refused before executing
    EXPIRED = "expired"  # retention ended and expired = "reject"
    STORE_UNAVAILABLE = "store_unavailable"
    DOWNSTREAM_UNAVAILABLE = "downstream_unavailable"  # not sent: the key was released
    CANCELLED = "cancelled"  # the client cancelled before anything was sent: the key was released
    RESOLVED = "resolved"  # an operator settled an unknown key
    APPROVED = "approved"  # a person approved a key's first execution (``approve``); it runs next
    APPROVAL_DECLINED = "approval_declined"  # a person said no: the key is settled with the refusal
    APPROVAL_UNAVAILABLE = "approval_unavailable"  # nobody could be asked, or nobody answered: released
