"""The state machine's decision: what a keyed call does about the record it found. Pure.

``decide(record, call, now)`` reads nothing and writes nothing; the guard does the I/O its
verdict names, and the model checker (``tests/model``) drives the very same function. The
order of the questions is the protocol:

    no record                              → CLAIM it (one atomic insert)
    IN_PROGRESS, lease alive               → CONFLICT if another payload, else WAIT (or IN_PROGRESS
                                             once the wait is over or in_flight = "reject").
                                             Never taken over, whatever its retention says.
    IN_PROGRESS, lease dead                → CONFLICT if another payload; RESEND if the downstream
                                             dedupes the key itself; else MARK_UNKNOWN (its holder
                                             crashed or stalled after, maybe, sending)
    UNKNOWN                                → CONFLICT if another payload; RESEND if the key is
                                             forwarded; else UNKNOWN. Never expires.
    COMPLETED past retention, or EXPIRED   → EXPIRED (expired = "reject") or TAKE_OVER (execute anew)
    COMPLETED                              → CONFLICT if another payload, else REPLAY

Liveness and retention are judged against ``now``, which the caller takes from the store's
clock (the database's time on PostgreSQL, so replicas with skewed wall clocks agree).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.store.records import Record, RecordState


class Verdict(enum.StrEnum):
    """What to do next; the ones that run the call downstream are ``RUNS``."""

    CLAIM = "claim"  # no record: insert one (and execute if the insert wins)
    REPLAY = "replay"  # the stored result, verbatim
    WAIT = "wait"  # a live call holds the key: wait for its result, then decide again
    CONFLICT = "conflict"  # the key belongs to another tool or other arguments
    IN_PROGRESS = "in_progress"  # refuse: still running and the wait is over (or not allowed)
    EXPIRED = "expired"  # refuse: retention ended and expired = "reject"
    UNKNOWN = "unknown"  # refuse: sent once, outcome never learned, never re-run blindly
    MARK_UNKNOWN = "mark_unknown"  # the holder's lease is dead: record UNKNOWN, then refuse
    TAKE_OVER = "take_over"  # retention ended, expired = "execute": run it anew (fence + 1)
    RESEND = "resend"  # outcome unknown but the downstream dedupes the key: send it again

    @property
    def runs(self) -> bool:
        """Whether this verdict may send the call downstream (after winning its fenced write)."""
        return self in (Verdict.CLAIM, Verdict.TAKE_OVER, Verdict.RESEND)


@dataclass(frozen=True, slots=True)
class Call:
    """What ``decide`` needs of one keyed call: its payload identity and its policy."""

    tool: str
    fingerprint: str
    forwards_key: bool = False
    expired: Literal["execute", "reject"] = "execute"
    in_flight: Literal["wait", "reject"] = "wait"
    wait_over: bool = False  # the caller already waited as long as its policy allows

    def same_payload(self, record: Record) -> bool:
        return record.tool == self.tool and record.fingerprint == self.fingerprint


def lease_alive(record: Record, now: datetime) -> bool:
    return record.lease_expires_at is not None and record.lease_expires_at > now


def decide(record: Record | None, call: Call, now: datetime) -> Verdict:
    """The verdict for ``call`` given the ``record`` its key has at ``now``."""
    if record is None:
        return Verdict.CLAIM
    state = record.state
    if state is RecordState.IN_PROGRESS:
        if not call.same_payload(record):
            return Verdict.CONFLICT
        if lease_alive(record, now):
            if call.in_flight == "reject" or call.wait_over:
                return Verdict.IN_PROGRESS
            return Verdict.WAIT
        return Verdict.RESEND if call.forwards_key else Verdict.MARK_UNKNOWN
    if state is RecordState.UNKNOWN:
        if not call.same_payload(record):
            return Verdict.CONFLICT
        return Verdict.RESEND if call.forwards_key else Verdict.UNKNOWN
    if state is RecordState.EXPIRED or record.expires_at <= now:
        return Verdict.EXPIRED if call.expired == "reject" else Verdict.TAKE_OVER
    if not call.same_payload(record):
        return Verdict.CONFLICT
    return Verdict.REPLAY
