"""The guard's seam for a refusal that is the key's answer (``Refused``), and the facts an ``Execute``
is told (``Attempt.resent``), on every store backend. The guard knows nothing of approval: these
tests speak only its vocabulary.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ApprovalUnavailable, OutcomeUnknown
from gateway.idempotency.guard import Attempt, Guard, Refused
from gateway.outcomes import Outcome
from gateway.store import RecordState
from gateway.store.base import Store
from gateway.store.records import EventQuery
from tests.engine.test_guard import KEY, Clock, Downstream, intent, lost, outcome, outcomes_of, store

__all__ = ["store"]  # the backend fixture, shared with test_guard

REFUSAL = {
    "content": [{"type": "text", "text": "no [approval_declined]"}],
    "isError": True,
    "_meta": {"idem-gateway/error": {"code": "approval_declined", "http_status": 403, "message": "no"}},
}


class Refusing:
    """An ``Execute`` that refuses before sending, counting how often it was asked to run."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, attempt: Attempt) -> dict[str, Any]:
        self.calls += 1
        raise Refused(REFUSAL, Outcome.APPROVAL_DECLINED, {"decided_by": "p"})


async def test_a_refusal_settles_the_key_and_every_retry_gets_it_verbatim_without_running(
    store: Store,
) -> None:
    clock, refusing, down = Clock(), Refusing(), Downstream()
    guard = Guard(store, clock=clock)
    first = await guard.run(intent(), refusing)
    again = [await guard.run(intent(), down) for _ in range(2)]
    assert first == REFUSAL and again == [REFUSAL, REFUSAL]  # no outcome stamp: a refusal, not a replay
    assert refusing.calls == 1 and down.executions == 0
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.COMPLETED and record.result == REFUSAL
    assert await outcomes_of(store) == ["approval_declined"] * 3
    events = await store.events(EventQuery("p"))
    assert [e.detail for e in reversed(events)] == [
        {"decided_by": "p"},
        {"replayed": True},
        {"replayed": True},
    ]


async def test_a_refused_key_runs_anew_once_its_retention_ends(store: Store) -> None:
    clock, refusing, down = Clock(), Refusing(), Downstream()
    guard = Guard(store, clock=clock)
    await guard.run(intent(retention=60.0), refusing)
    clock.advance(seconds=61)
    fresh = await guard.run(intent(retention=60.0), down)
    assert outcome(fresh) == "executed" and down.executions == 1


async def test_a_refusal_raised_after_sending_cannot_settle_the_key(store: Store) -> None:
    """A refusal stands for "nothing ran"; after ``mark_sent`` that is not known, so: unknown."""

    async def sent_then_refused(attempt: Attempt) -> dict[str, Any]:
        attempt.mark_sent()
        raise Refused(REFUSAL, Outcome.APPROVAL_DECLINED)

    guard = Guard(store, clock=Clock())
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(), sent_then_refused)
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.UNKNOWN


async def test_a_not_executed_error_releases_the_key_with_its_own_audit_detail(store: Store) -> None:
    async def unavailable(attempt: Attempt) -> dict[str, Any]:
        raise ApprovalUnavailable("nobody answered", reason="timeout")

    guard = Guard(store, clock=Clock())
    with pytest.raises(ApprovalUnavailable):
        await guard.run(intent(), unavailable)
    assert await store.get("p", KEY) is None  # released: a retry runs
    events = await store.events(EventQuery("p"))
    assert [(e.outcome, e.detail) for e in events] == [("approval_unavailable", {"reason": "timeout"})]


async def test_an_execute_is_told_when_it_resends_a_call_sent_before(store: Store) -> None:
    seen: list[bool] = []

    async def down(attempt: Attempt) -> dict[str, Any]:
        seen.append(attempt.resent)
        attempt.mark_sent()
        return {"content": [], "isError": False}

    guard = Guard(store, clock=Clock())
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(forwards_key=True), lost)
    await guard.run(intent(forwards_key=True), down)  # unknown + forwarded key: re-sent
    await guard.run(intent("r" * 20), down)  # a fresh claim
    assert seen == [True, False]
