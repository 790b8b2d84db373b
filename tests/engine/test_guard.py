"""The guard in process, with an injected clock: time-dependent rules tested without waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from gateway.errors import IdempotencyKeyExpired, OutcomeUnknown
from gateway.idempotency.guard import Guard, Intent
from gateway.manifests.models import ToolPolicy
from gateway.store import RecordState, open_store
from gateway.store.base import Store
from gateway.store.records import EventQuery


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

    def __init__(self) -> None:
        self.executions = 0
        self.release = anyio.Event()
        self.entered = anyio.Event()
        self.hold = False

    async def __call__(self) -> dict[str, Any]:
        self.executions += 1
        self.entered.set()
        if self.hold:
            await self.release.wait()
        return {"content": [{"type": "text", "text": f"run {self.executions}"}], "isError": False}


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def intent(key: str = "k" * 20, **policy: Any) -> Intent:
    return Intent(
        principal="p",
        key=key,
        server="payments",
        tool="create_invoice",
        fingerprint="f" * 64,
        policy=ToolPolicy(**policy),
        arguments={"amount": 1},
    )


async def test_after_retention_a_retry_executes_anew_with_execute(store: Store) -> None:
    clock, down = Clock(), Downstream()
    guard = Guard(store, clock=clock)
    first = await guard.run(intent(retention=60.0), down)
    clock.advance(seconds=59)
    replay = await guard.run(intent(retention=60.0), down)
    clock.advance(seconds=2)
    fresh = await guard.run(intent(retention=60.0), down)
    assert [r["_meta"]["idem-gateway/outcome"] for r in (first, replay, fresh)] == [
        "executed",
        "replayed",
        "executed",
    ]
    assert down.executions == 2


async def test_after_retention_a_retry_is_refused_with_reject_and_the_tombstone_outlives_the_sweep(
    store: Store,
) -> None:
    clock, down = Clock(), Downstream()
    guard = Guard(store, clock=clock)
    await guard.run(intent(retention=60.0, expired="reject"), down)
    clock.advance(seconds=61)
    await store.purge(clock())  # the result is dropped; a tombstone stays
    record = await store.get("p", "k" * 20)
    assert record is not None and record.state is RecordState.EXPIRED and record.result is None
    with pytest.raises(IdempotencyKeyExpired) as info:
        await guard.run(intent(retention=60.0, expired="reject"), down)
    assert info.value.http_status == 410
    clock.advance(days=8)
    await store.purge(clock())
    assert await store.get("p", "k" * 20) is None
    assert down.executions == 1


async def test_the_sweeper_deletes_only_expired_records(store: Store) -> None:
    clock, down = Clock(), Downstream()
    guard = Guard(store, clock=clock)
    await guard.run(intent("short-lived-key-0001", retention=10.0), down)
    await guard.run(intent("long-lived-key-00001", retention=3600.0), down)
    clock.advance(seconds=11)
    deleted = await store.purge(clock())
    assert deleted == 1
    assert await store.get("p", "short-lived-key-0001") is None
    assert await store.get("p", "long-lived-key-00001") is not None


async def test_a_stale_holders_late_completion_is_rejected(store: Store) -> None:
    clock = Clock()
    holder_down, other_down = Downstream(), Downstream()
    holder_down.hold = True
    holder = Guard(store, clock=clock, owner="holder", lease_ttl=5.0)
    other = Guard(store, clock=clock, owner="other", lease_ttl=5.0)
    results: dict[str, Any] = {}

    async def run_holder() -> None:
        results["holder"] = await holder.run(intent(), holder_down)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_holder)
            await holder_down.entered.wait()
            # The holder stops renewing (as if its process froze); its lease runs out.
            clock.advance(seconds=6)
            with pytest.raises(OutcomeUnknown):
                await other.run(intent(), other_down)
            holder_down.release.set()
    record = await store.get("p", "k" * 20)
    assert record is not None and record.state is RecordState.UNKNOWN and record.result is None
    assert other_down.executions == 0
    events = await store.events(EventQuery(principal="p"))
    assert [e.outcome for e in events].count("executed") == 0


async def test_concurrent_duplicates_wait_and_get_the_first_result(store: Store) -> None:
    down = Downstream()
    down.hold = True
    guard = Guard(store)
    results: list[dict[str, Any]] = []

    async def call() -> None:
        results.append(await guard.run(intent(), down))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(call)
            await down.entered.wait()
            down.release.set()
    assert down.executions == 1
    outcomes = sorted(r["_meta"]["idem-gateway/outcome"] for r in results)
    assert outcomes == ["executed"] + ["replayed"] * 19
    assert len({r["content"][0]["text"] for r in results}) == 1


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
            await guard.run(intent(retention=60.0), _lost)
    retry_intent = replace(intent(retention=60.0), forwards_key=path == "unknown_forwarded")
    down = Downstream()
    down.hold = True
    results: list[dict[str, Any]] = []

    async def retry() -> None:
        results.append(await guard.run(retry_intent, down))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(retry)
            await down.entered.wait()
            down.release.set()
    assert down.executions == 1
    outcomes = sorted(r["_meta"]["idem-gateway/outcome"] for r in results)
    assert outcomes == ["executed"] + ["replayed"] * 19


async def _lost() -> dict[str, Any]:
    """A downstream call whose outcome never came back."""
    raise TimeoutError("no answer")
