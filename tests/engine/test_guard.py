"""The guard in process, on every store backend, with an injected clock: time-dependent rules
tested without waiting, races forced by gating on what the guard exposes (``waiting``).

Several ``Guard`` instances on one store stand for several gateway processes (each has its own
owner and in-process wake-ups, so a duplicate in another "process" is noticed by polling).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from gateway.downstream.errors import DownstreamLost, DownstreamRejected
from gateway.errors import (
    DownstreamUnavailable,
    IdempotencyKeyExpired,
    IdempotencyKeyInProgress,
    OutcomeUnknown,
    StoreUnavailable,
)
from gateway.idempotency.guard import Attempt, Guard, Intent
from gateway.manifests.models import ToolPolicy
from gateway.store import RecordState, Settled, open_store
from gateway.store.base import Store
from gateway.store.memory import MemoryStore
from gateway.store.records import EventQuery

KEY = "k" * 20


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class Downstream:
    """Counts executions; can hold a call until the test lets it go."""

    def __init__(self, *, hold: bool = False, name: str = "run") -> None:
        self.executions = 0
        self.release = anyio.Event()
        self.entered = anyio.Event()
        self.hold = hold
        self.name = name

    async def __call__(self, attempt: Attempt) -> dict[str, Any]:
        attempt.mark_sent()
        self.executions += 1
        self.entered.set()
        if self.hold:
            # Bounded: a call runs shielded ("finish"), so a failing test must not hang on it.
            with anyio.fail_after(20):
                await self.release.wait()
        return {"content": [{"type": "text", "text": f"{self.name} {self.executions}"}], "isError": False}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    elif request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
    else:
        import pg

        cm = pg.fresh_database(request.getfixturevalue("postgres_url"))
        s = open_store(cm.__enter__())
        request.addfinalizer(lambda: cm.__exit__(None, None, None))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def intent(key: str = KEY, *, forwards_key: bool = False, **policy: Any) -> Intent:
    return Intent(
        principal="p",
        key=key,
        server="payments",
        tool="create_invoice",
        fingerprint="f" * 64,
        policy=ToolPolicy(**policy),
        arguments={"amount": 1},
        forwards_key=forwards_key,
    )


def outcome(result: dict[str, Any]) -> str:
    return str(result["_meta"]["idem-gateway/outcome"])


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll an in-process condition the guard makes true (bounded; a checkpoint per pass)."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the guard's own counters, no event to wait on
            await anyio.sleep(0.001)


async def outcomes_of(store: Store) -> list[str]:
    return [e.outcome for e in reversed(await store.events(EventQuery(principal="p", limit=1000)))]


# ---- retention -------------------------------------------------------------------------------


async def test_after_retention_a_retry_executes_anew_with_execute(store: Store) -> None:
    clock, down = Clock(), Downstream()
    guard = Guard(store, clock=clock)
    first = await guard.run(intent(retention=60.0), down)
    clock.advance(seconds=59)
    replay = await guard.run(intent(retention=60.0), down)
    clock.advance(seconds=2)
    fresh = await guard.run(intent(retention=60.0), down)
    assert [outcome(r) for r in (first, replay, fresh)] == ["executed", "replayed", "executed"]
    assert down.executions == 2


async def test_retention_counts_from_the_result_not_from_the_claim(store: Store) -> None:
    clock, down = Clock(), Downstream(hold=True)
    guard = Guard(store, clock=clock, lease_ttl=300.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(guard.run, intent(retention=60.0), down)
        await down.entered.wait()
        clock.advance(seconds=50)  # the call takes 50 s of its 60 s retention
        down.release.set()
    clock.advance(seconds=30)  # 80 s after the claim, 30 s after the result
    replay = await guard.run(intent(retention=60.0), down)
    assert outcome(replay) == "replayed"
    assert down.executions == 1


async def test_after_retention_a_retry_is_refused_with_reject_and_the_tombstone_outlives_the_sweep(
    store: Store,
) -> None:
    clock, down = Clock(), Downstream()
    guard = Guard(store, clock=clock)
    await guard.run(intent(retention=60.0, expired="reject"), down)
    clock.advance(seconds=61)
    await store.purge(clock())  # the result is dropped; a tombstone stays
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.EXPIRED and record.result is None
    with pytest.raises(IdempotencyKeyExpired) as info:
        await guard.run(intent(retention=60.0, expired="reject"), down)
    assert info.value.http_status == 410
    clock.advance(days=8)
    await store.purge(clock())
    assert await store.get("p", KEY) is None
    assert down.executions == 1


async def test_a_live_call_past_its_retention_is_never_taken_over_by_waiting_retries(store: Store) -> None:
    """Issue 8, item 1: retention 1 s, a call that runs long; five retries from five "processes"
    arrive after the retention ended while the lease is alive: they wait, one execution."""
    clock = Clock()
    down = Downstream(hold=True)
    holder = Guard(store, clock=clock, owner="holder", lease_ttl=30.0)
    others = [Guard(store, clock=clock, owner=f"other-{i}", lease_ttl=30.0, poll_max=0.01) for i in range(5)]
    results: list[dict[str, Any]] = []

    async def retry(guard: Guard) -> None:
        results.append(await guard.run(intent(retention=1.0), down))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(retry, holder)
            await down.entered.wait()
            clock.advance(seconds=5)  # past retention; the lease (30 s) is alive
            for guard in others:
                tg.start_soon(retry, guard)
            await wait_until(lambda: all(g.waiting("p", KEY) == 1 for g in others))
            down.release.set()
    assert down.executions == 1
    assert sorted(outcome(r) for r in results) == ["executed"] + ["replayed"] * 5


# ---- unknown ----------------------------------------------------------------------------------


async def lost(attempt: Attempt) -> dict[str, Any]:
    """A downstream call sent and never answered."""
    attempt.mark_sent()
    raise DownstreamLost("no answer", reason="timeout")


async def test_an_unknown_key_never_runs_again_after_its_retention_nor_after_a_purge(store: Store) -> None:
    """Issue 8, item 2."""
    clock, down = Clock(), Downstream()
    guard = Guard(store, clock=clock)
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(retention=12.0), lost)
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(retention=12.0), down)
    clock.advance(seconds=13)
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(retention=12.0), down)
    clock.advance(days=365)
    assert await store.purge(clock()) == 0
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(retention=12.0), down)
    assert down.executions == 0
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.UNKNOWN


async def test_a_forwarded_key_is_resent_once_after_an_unknown_outcome(store: Store) -> None:
    guard, down = Guard(store), Downstream()
    with pytest.raises(OutcomeUnknown):
        await guard.run(intent(forwards_key=True), lost)
    resent = await guard.run(intent(forwards_key=True), down)
    again = await guard.run(intent(forwards_key=True), down)
    assert (outcome(resent), outcome(again)) == ("executed", "replayed")
    assert down.executions == 1


# ---- holders that die, stall, or come back -----------------------------------------------------


async def test_a_dead_holder_is_marked_unknown_and_its_late_result_settles_the_key(store: Store) -> None:
    """Issue 8, item 6: a holder paused past its lease is judged dead; when it comes back with
    the result while nobody took the key over, the result settles it (audited as late)."""
    clock = Clock()
    down = Downstream(hold=True)
    holder = Guard(store, clock=clock, owner="holder", lease_ttl=5.0)
    other = Guard(store, clock=clock, owner="other", lease_ttl=5.0)
    results: dict[str, Any] = {}

    async def run_holder() -> None:
        results["holder"] = await holder.run(intent(), down)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_holder)
            await down.entered.wait()
            clock.advance(seconds=6)  # the holder froze: its lease ran out
            with pytest.raises(OutcomeUnknown):
                await other.run(intent(), Downstream())
            marked = await store.get("p", KEY)
            assert marked is not None and marked.state is RecordState.UNKNOWN
            down.release.set()
    assert outcome(results["holder"]) == "executed"
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.COMPLETED
    assert record.result is not None and record.result["content"][0]["text"] == "run 1"
    assert outcome(await other.run(intent(), Downstream())) == "replayed"
    events = await store.events(EventQuery(principal="p", outcome="executed"))
    assert [e.detail for e in events] == [{"settled_late": True}]
    assert down.executions == 1


async def test_a_late_result_does_not_overwrite_a_key_that_was_taken_over(store: Store) -> None:
    clock = Clock()
    slow = Downstream(hold=True, name="slow")
    holder = Guard(store, clock=clock, owner="holder", lease_ttl=5.0)
    other = Guard(store, clock=clock, owner="other", lease_ttl=5.0)
    fast = Downstream(name="fast")
    held: list[dict[str, Any]] = []

    async def hold() -> None:
        held.append(await holder.run(intent(forwards_key=True), slow))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await slow.entered.wait()
            clock.advance(seconds=6)
            resent = await other.run(intent(forwards_key=True), fast)  # the downstream dedupes
            slow.release.set()
    assert outcome(resent) == "executed" and resent["content"][0]["text"] == "fast 1"
    # The stale holder's caller still gets what its downstream answered (the same effect: the
    # downstream deduplicated the key), but that answer is not what the key stores.
    assert [outcome(r) for r in held] == ["executed"]
    assert held[0]["content"][0]["text"] == "slow 1"
    record = await store.get("p", KEY)
    assert record is not None and record.result is not None
    assert record.result["content"][0]["text"] == "fast 1"
    assert record.state is RecordState.COMPLETED and record.lease_owner == "other"
    replay = await other.run(intent(forwards_key=True), Downstream())
    assert outcome(replay) == "replayed" and replay["content"][0]["text"] == "fast 1"
    assert fast.executions == 1 and slow.executions == 1


class StallingStore(MemoryStore):
    """A store whose settling writes fail while ``stalled`` (the database locked, say)."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        super().__init__(clock=clock)
        self.stalled = False
        self.refused = 0

    def _check(self) -> None:
        if self.stalled:
            self.refused += 1
            raise StoreUnavailable("the store is stalled")

    async def complete(self, *args: Any, **kwargs: Any) -> Settled:
        self._check()
        return await super().complete(*args, **kwargs)

    async def renew(self, *args: Any, **kwargs: Any) -> bool:
        self._check()
        return await super().renew(*args, **kwargs)


async def test_a_store_stall_during_completion_is_retried_and_the_result_kept() -> None:
    """Issue 8, item 5: the caller is told executed, the key ends completed with its event."""
    clock = Clock()
    store = StallingStore(clock)
    guard = Guard(store, clock=clock, lease_ttl=30.0)
    async with anyio.create_task_group() as tg:
        await tg.start(guard.serve)
        store.stalled = True
        result = await guard.run(intent(), Downstream())
        assert outcome(result) == "executed"
        assert guard.holding() == 1  # still holding (and renewing) while the write is retried
        await wait_until(lambda: store.refused >= 2)
        store.stalled = False
        await wait_until(lambda: guard.holding() == 0)
        tg.cancel_scope.cancel()
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.COMPLETED
    assert await outcomes_of(store) == ["executed"]


async def test_a_stalled_completion_settles_a_key_another_process_marked_unknown() -> None:
    clock = Clock()
    store = StallingStore(clock)
    holder = Guard(store, clock=clock, owner="holder", lease_ttl=5.0)
    other = Guard(store, clock=clock, owner="other", lease_ttl=5.0)
    async with anyio.create_task_group() as tg:
        await tg.start(holder.serve)
        store.stalled = True
        assert outcome(await holder.run(intent(), Downstream())) == "executed"
        clock.advance(seconds=6)  # renewals failed: the lease is dead for everybody else
        with pytest.raises(OutcomeUnknown):
            await other.run(intent(), Downstream())
        store.stalled = False
        await wait_until(lambda: holder.holding() == 0)
        tg.cancel_scope.cancel()
    assert outcome(await other.run(intent(), Downstream())) == "replayed"
    assert await outcomes_of(store) == ["unknown", "executed", "replayed"]
    [executed] = await store.events(EventQuery(principal="p", outcome="executed"))
    assert executed.detail == {"settled_late": True}


async def test_a_holder_cleaning_up_never_stops_another_holder_of_the_same_key_renewing(store: Store) -> None:
    """Two holders of one key in one process (the first judged dead, the key re-sent under
    fence + 1): when the first finishes, the second keeps its lease."""
    clock = Clock()
    first_down, second_down = Downstream(hold=True), Downstream(hold=True)
    guard = Guard(store, clock=clock, lease_ttl=5.0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard.run, intent(forwards_key=True), first_down)
            await first_down.entered.wait()
            clock.advance(seconds=6)
            tg.start_soon(guard.run, intent(forwards_key=True), second_down)
            await second_down.entered.wait()
            assert guard.holding() == 2
            first_down.release.set()
            await wait_until(lambda: guard.holding() == 1)
            second = await store.get("p", KEY)
            assert second is not None and second.state is RecordState.IN_PROGRESS
            until = clock() + timedelta(seconds=5)
            assert await store.renew("p", KEY, second.fence, until)  # what the renewal loop does
            second_down.release.set()
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.COMPLETED
    assert record.result is not None and record.result["content"][0]["text"] == "run 1"


async def test_a_renewal_racing_a_completion_is_not_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 8, item 15: "lost the lease" only when another process really took the key."""
    # A 30 ms lease makes renewals race completions; the guard's own clock is frozen so that a
    # slow claim on a busy machine is not (rightly) refused as a lease outlived before sending.
    guard = Guard(store, lease_ttl=0.03, monotonic=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="gateway.idempotency.guard"):
        async with anyio.create_task_group() as tg:
            await tg.start(guard.serve)
            for i in range(60):
                await guard.run(intent(f"key-{i:016d}"), Downstream())
            tg.cancel_scope.cancel()
    assert not [r for r in caplog.records if "lost the lease" in r.getMessage()]


# ---- releasing: what proves nothing ran ------------------------------------------------------


async def test_not_sent_releases_the_key_and_a_retry_executes(store: Store) -> None:
    guard, down = Guard(store), Downstream()

    async def unreachable(attempt: Attempt) -> dict[str, Any]:
        raise DownstreamUnavailable("down")

    with pytest.raises(DownstreamUnavailable):
        await guard.run(intent(), unreachable)
    assert await store.get("p", KEY) is None
    assert outcome(await guard.run(intent(), down)) == "executed"
    assert await outcomes_of(store) == ["downstream_unavailable", "executed"]


async def test_a_rejection_before_execution_releases_the_key(store: Store) -> None:
    guard, down = Guard(store), Downstream()

    async def rejected(attempt: Attempt) -> dict[str, Any]:
        attempt.mark_sent()
        raise DownstreamRejected("invalid params", code=-32602)

    with pytest.raises(DownstreamRejected):
        await guard.run(intent(), rejected)
    assert await store.get("p", KEY) is None
    assert outcome(await guard.run(intent(), down)) == "executed"


async def test_an_error_after_sending_leaves_the_key_unknown(store: Store) -> None:
    guard, down = Guard(store), Downstream()

    async def charged_then_failed(attempt: Attempt) -> dict[str, Any]:
        attempt.mark_sent()
        raise DownstreamLost("internal error", reason="error_after_send", code=-32603)

    for store_errors in (True, False):
        key = f"key-store-errors-{store_errors}"
        with pytest.raises(OutcomeUnknown):
            await guard.run(intent(key, store_errors=store_errors), charged_then_failed)
        with pytest.raises(OutcomeUnknown):
            await guard.run(intent(key, store_errors=store_errors), down)
    assert down.executions == 0


@pytest.mark.parametrize("cancel", ["forward", "finish"])
async def test_a_cancellation_before_anything_was_sent_releases_the_key(store: Store, cancel: str) -> None:
    """Issue 8, item 8: the client gives up while the downstream is still reconnecting."""
    guard, down = Guard(store), Downstream()
    waiting = anyio.Event()

    async def reconnecting(attempt: Attempt) -> dict[str, Any]:
        waiting.set()
        await anyio.sleep_forever()  # never gets to mark_sent
        raise AssertionError

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            if cancel == "finish":
                # "finish" shields the call from the client; a shutdown is what cancels it here.
                tg.start_soon(guard.run, intent(cancel="forward"), reconnecting)
            else:
                tg.start_soon(guard.run, intent(cancel=cancel), reconnecting)
            await waiting.wait()
            tg.cancel_scope.cancel()
    assert await store.get("p", KEY) is None
    assert await outcomes_of(store) == ["cancelled"]
    assert outcome(await guard.run(intent(), down)) == "executed"


async def test_a_forwarded_cancellation_after_sending_leaves_the_key_unknown(store: Store) -> None:
    guard, down = Guard(store), Downstream(hold=True)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard.run, intent(cancel="forward"), down)
            await down.entered.wait()
            tg.cancel_scope.cancel()
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.UNKNOWN


async def test_finish_shields_a_sent_call_from_the_clients_cancellation(store: Store) -> None:
    guard, down = Guard(store), Downstream(hold=True)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard.run, intent(cancel="finish"), down)
            await down.entered.wait()
            tg.cancel_scope.cancel()  # the client gives up; the call goes on
            down.release.set()
    record = await store.get("p", KEY)
    assert record is not None and record.state is RecordState.COMPLETED
    assert outcome(await guard.run(intent(), Downstream())) == "replayed"


async def test_a_result_that_is_not_final_releases_the_key(store: Store) -> None:
    guard = Guard(store)

    async def asks(attempt: Attempt) -> dict[str, Any]:
        attempt.mark_sent()
        return {"resultType": "input_required", "inputRequests": {}}

    result = await guard.run(intent(), asks, is_final=lambda r: r.get("resultType") != "input_required")
    assert result["resultType"] == "input_required"
    assert await store.get("p", KEY) is None


# ---- duplicates ------------------------------------------------------------------------------


async def test_concurrent_duplicates_wait_and_get_the_first_result(store: Store) -> None:
    down = Downstream(hold=True)
    guard = Guard(store)
    results: list[dict[str, Any]] = []

    async def call() -> None:
        results.append(await guard.run(intent(), down))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(call)
            await down.entered.wait()
            await wait_until(lambda: guard.waiting("p", KEY) == 19)  # all parked before the release
            down.release.set()
    assert down.executions == 1
    assert sorted(outcome(r) for r in results) == ["executed"] + ["replayed"] * 19
    assert len({r["content"][0]["text"] for r in results}) == 1


async def test_a_duplicate_counts_as_waiting_from_its_first_wait_until_it_returns_and_is_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What tests outside the process gate races on: ``waiting`` (``/metrics``' gauge) does not
    drop between the duplicate's polls of the store, and the DEBUG line comes once per duplicate."""
    down = Downstream(hold=True)
    guard = Guard(MemoryStore(), poll_min=0.001, poll_max=0.001)  # many polls while it waits
    polls = [0]
    get = guard.store.get

    async def counted_get(principal: str, key: str) -> Any:
        polls[0] += 1
        assert guard.waiting("p", KEY) == 1  # still counted while it reads the store
        return await get(principal, key)

    monkeypatch.setattr(guard.store, "get", counted_get)
    results: list[dict[str, Any]] = []
    caplog.set_level(logging.DEBUG, logger="gateway.idempotency.guard")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard.run, intent(), down)
            await down.entered.wait()
            assert guard.waiting() == 0
            tg.start_soon(lambda: _append(results, guard.run(intent(), down)))
            await wait_until(lambda: polls[0] >= 20)
            assert guard.waiting("p", KEY) == guard.waiting() == 1
            down.release.set()
    assert [outcome(r) for r in results] == ["replayed"]
    assert guard.waiting() == 0
    lines = [r.getMessage() for r in caplog.records if "waits for its key's first call" in r.getMessage()]
    assert lines == ["a duplicate waits for its key's first call (1 waiting)"]


async def _append(results: list[dict[str, Any]], call: Any) -> None:
    results.append(await call)


async def test_a_duplicate_whose_wait_runs_out_is_refused_in_progress(store: Store) -> None:
    clock, down = Clock(), Downstream(hold=True)
    ticks = [0.0]
    guard = Guard(store, clock=clock, monotonic=lambda: ticks[0])  # both clocks moved by hand
    refused: list[IdempotencyKeyInProgress] = []

    async def duplicate() -> None:
        with pytest.raises(IdempotencyKeyInProgress) as info:
            await guard.run(intent(wait=5.0), down)
        refused.append(info.value)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(guard.run, intent(wait=5.0), down)
            await down.entered.wait()
            try:
                tg.start_soon(duplicate)
                await wait_until(lambda: guard.waiting("p", KEY) == 1)
                ticks[0] = 6.0  # its five seconds are over
                clock.advance(seconds=6)
                await wait_until(lambda: bool(refused))
            finally:
                down.release.set()
    # The first call ends at the latest when its downstream timeout (30 s) does: 6 s are gone.
    assert refused[0].http_status == 409 and refused[0].extra["retry_after_seconds"] == 30 - 6
    assert down.executions == 1


@pytest.mark.parametrize("path", ["expired", "unknown_forwarded"])
async def test_racing_retries_take_over_a_record_once(store: Store, path: str) -> None:
    """Many retries race to take over one record (past retention, or unknown with a forwarded
    key): one of them re-executes, the others wait for it and replay its result."""
    clock = Clock()
    guard = Guard(store, clock=clock)
    if path == "expired":
        await guard.run(intent(retention=60.0), Downstream())
        clock.advance(seconds=61)
    else:
        with pytest.raises(OutcomeUnknown):
            await guard.run(intent(retention=60.0), lost)
    retry_intent = replace(intent(retention=60.0), forwards_key=path == "unknown_forwarded")
    down = Downstream(hold=True)
    results: list[dict[str, Any]] = []

    async def retry() -> None:
        results.append(await guard.run(retry_intent, down))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(retry)
            await down.entered.wait()
            await wait_until(lambda: guard.waiting("p", KEY) == 19)
            down.release.set()
    assert down.executions == 1
    assert sorted(outcome(r) for r in results) == ["executed"] + ["replayed"] * 19


async def test_a_holder_that_outlived_its_lease_before_sending_sends_nothing(store: Store) -> None:
    """The model checker's trace (tests/model/README.md, "Found"): a holder paused between its
    claim and its send must not send once its lease is over by its own clock; nothing ran, so
    the key is released and a retry executes once."""
    now = [0.0]
    guard, down = Guard(store, lease_ttl=5.0, monotonic=lambda: now[0]), Downstream()

    async def paused(attempt: Attempt) -> dict[str, Any]:
        now[0] += 5.0  # the process was stopped for a whole lease after claiming
        return await down(attempt)  # which marks the call sent right before it "runs"

    with pytest.raises(DownstreamUnavailable) as refused:
        await guard.run(intent(), paused)
    assert refused.value.extra == {"reason": "lease_expired_before_send"}
    assert down.executions == 0
    assert await store.get("p", KEY) is None
    assert outcome(await guard.run(intent(), down)) == "executed"
    assert down.executions == 1
