"""The replay cache: a completed record replayed from memory, with no store round trip, and never
trusted past what would change it (retention by the clock, its own age, another payload).

In process, a store that counts the reads and claims the guard makes shows what the cache
saves; a real gateway over stdio shows it in use (a hand deletion of the row does not reach it)
and ``--replay-cache 0`` turning it off.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.errors import IdempotencyKeyConflict, IdempotencyKeyExpired
from gateway.idempotency.guard import Guard
from gateway.idempotency.replays import ReplayCache
from gateway.store.memory import MemoryStore
from gateway.store.records import Claim, ClaimResult, EventQuery, Record, RecordState
from tests.engine.test_guard import KEY, Clock, Downstream, intent, outcome, wait_until
from tests.never_twice.kit import gateway, sql, sqlite_path
from tests.support import NO_REPLAY_CACHE, Setup, error_code, new_key, wait_for
from tests.support import outcome as outcome_of

INVOICE = {"customer": "acme", "amount": 120.5}


class CountingStore(MemoryStore):
    """The in-memory store, counting the record reads a call costs (claims and gets)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def claim(self, claim: Claim) -> ClaimResult:
        self.reads += 1
        return await super().claim(claim)

    async def get(self, principal: str, key: str) -> Record | None:
        self.reads += 1
        return await super().get(principal, key)


class Ticks:
    """A monotonic clock the test moves by hand (the cache's entries age by it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard_with_cache(store: MemoryStore, clock: Clock, ticks: Ticks | None = None, **guard: Any) -> Guard:
    replays = ReplayCache(ttl=60.0, monotonic=ticks or Ticks())
    return Guard(store, clock=clock, replays=replays, **guard)


async def outcomes(store: MemoryStore) -> list[str]:
    return [e.outcome for e in reversed(await store.events(EventQuery(principal=None, limit=100)))]


async def test_a_replay_of_a_result_this_process_stored_reads_nothing_and_is_still_audited() -> None:
    store, clock, down = CountingStore(), Clock(), Downstream()
    guard = guard_with_cache(store, clock)
    first = await guard.run(intent(), down)
    reads = store.reads
    replays = [await guard.run(intent(), down) for _ in range(3)]
    assert outcome(first) == "executed" and [outcome(r) for r in replays] == ["replayed"] * 3
    assert store.reads == reads  # no claim, no get: the three replays came from memory
    assert down.executions == 1
    assert await outcomes(store) == ["executed", "replayed", "replayed", "replayed"]
    assert all(r["content"] == first["content"] for r in replays)


async def test_another_payload_under_a_cached_key_is_refused_as_a_conflict() -> None:
    store, clock, down = CountingStore(), Clock(), Downstream()
    guard = guard_with_cache(store, clock)
    await guard.run(intent(), down)
    other = replace(intent(), fingerprint="0" * 64)
    with pytest.raises(IdempotencyKeyConflict):
        await guard.run(other, down)
    assert down.executions == 1


async def test_the_cache_is_scoped_per_principal() -> None:
    store, clock, down = CountingStore(), Clock(), Downstream()
    guard = guard_with_cache(store, clock)
    await guard.run(intent(), down)
    someone_else = await guard.run(replace(intent(), principal="q"), down)
    assert outcome(someone_else) == "executed"  # the same key of another principal is its own
    assert down.executions == 2


@pytest.mark.parametrize("expired", ["execute", "reject"])
async def test_past_retention_a_cached_result_is_not_replayed(expired: str) -> None:
    store, clock, down = CountingStore(), Clock(), Downstream()
    guard = guard_with_cache(store, clock)
    await guard.run(intent(retention=60.0, expired=expired), down)
    clock.advance(seconds=61)
    if expired == "reject":
        with pytest.raises(IdempotencyKeyExpired):
            await guard.run(intent(retention=60.0, expired=expired), down)
        assert down.executions == 1
    else:
        fresh = await guard.run(intent(retention=60.0, expired=expired), down)
        assert outcome(fresh) == "executed" and down.executions == 2
        again = await guard.run(intent(retention=60.0, expired=expired), down)
        assert outcome(again) == "replayed" and again["content"] == fresh["content"]


async def test_an_entry_past_its_age_is_read_from_the_store_again() -> None:
    store, clock, down, ticks = CountingStore(), Clock(), Downstream(), Ticks()
    guard = guard_with_cache(store, clock, ticks)
    await guard.run(intent(), down)
    await guard.run(intent(), down)
    reads = store.reads
    ticks.now = 60.0  # the entry's age is up: an operator may have changed the row meanwhile
    replay = await guard.run(intent(), down)
    assert outcome(replay) == "replayed" and store.reads == reads + 1
    assert (await guard.run(intent(), down)) and store.reads == reads + 1  # read, then held again


async def test_a_result_read_from_the_store_is_held_for_the_next_replay() -> None:
    store, clock, down = CountingStore(), Clock(), Downstream()
    await Guard(store, clock=clock).run(intent(), down)  # another process stored it
    guard = guard_with_cache(store, clock)
    await guard.run(intent(), down)
    reads = store.reads
    await guard.run(intent(), down)
    assert store.reads == reads and down.executions == 1


async def test_duplicates_parked_on_a_running_call_are_answered_from_memory_once_it_completes() -> None:
    """The race, forced: the first call is held downstream; four duplicates in this process are
    seen parked (``waiting``) before it is let go. One execution; every duplicate replays the
    stored result, and waking costs them no store read (the completion put it in the cache).

    The guard's polling (for other processes' completions) is pushed past the test, so the
    duplicates wake only by the in-process event: a poll falling between the count and the
    release on a slow machine would read the in-progress row, which is not what is measured."""
    store, clock, down = CountingStore(), Clock(), Downstream(hold=True)
    guard = guard_with_cache(store, clock, poll_min=3600.0, poll_max=3600.0)
    results: list[dict[str, Any]] = []

    async def call() -> None:
        results.append(await guard.run(intent(), down))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await down.entered.wait()
            for _ in range(4):
                tg.start_soon(call)
            await wait_until(lambda: guard.waiting("p", KEY) == 4)
            reads = store.reads
            down.release.set()
    assert down.executions == 1
    assert sorted(outcome(r) for r in results) == ["executed"] + ["replayed"] * 4
    assert store.reads == reads
    assert all(r["content"] == results[0]["content"] for r in results)


# ---- the cache itself -----------------------------------------------------------------------------


def completed(
    key: str = KEY, *, fence: int = 1, text: str = "ok", state: RecordState = RecordState.COMPLETED
) -> Record:
    at = datetime(2026, 12, 3, tzinfo=UTC)
    return Record(
        principal="p",
        key=key,
        server="s",
        tool="t",
        fingerprint="f",
        state=state,
        fence=fence,
        lease_owner=None,
        lease_expires_at=None,
        created_at=at,
        expires_at=at + timedelta(days=1),
        first_executed_at=at,
        result={"content": [{"type": "text", "text": text}]},
    )


def test_each_replay_gets_its_own_copy_of_the_result() -> None:
    cache = ReplayCache()
    cache.put(completed())
    first = cache.get("p", KEY)
    assert first is not None and first.result is not None
    first.result["content"][0]["text"] = "changed by a caller"
    again = cache.get("p", KEY)
    assert again is not None and again.result == {"content": [{"type": "text", "text": "ok"}]}


def test_only_a_completed_record_is_kept() -> None:
    cache = ReplayCache()
    for state in (RecordState.IN_PROGRESS, RecordState.UNKNOWN, RecordState.EXPIRED):
        cache.put(completed(state=state))
    assert len(cache) == 0 and cache.get("p", KEY) is None


def test_the_cache_is_bounded_in_bytes_least_recently_used_first_out() -> None:
    one = len('{"content":[{"type":"text","text":"' + "x" * 100 + '"}]}')
    cache = ReplayCache(max_bytes=3 * one, max_entry=one)
    for name in "abc":
        cache.put(completed(name * 20, text="x" * 100))
    assert cache.get("p", "a" * 20) is not None  # a is now the most recently used
    cache.put(completed("d" * 20, text="x" * 100))
    assert [cache.get("p", n * 20) is not None for n in "abcd"] == [True, False, True, True]
    assert cache.size_bytes == 3 * one
    cache.put(completed("e" * 20, text="x" * 101))  # larger than an entry may be: not kept
    assert cache.get("p", "e" * 20) is None and cache.size_bytes == 3 * one


def test_putting_the_same_record_again_does_not_renew_its_age() -> None:
    ticks = Ticks()
    cache = ReplayCache(ttl=60.0, monotonic=ticks)
    cache.put(completed())
    ticks.now = 59.0
    cache.put(completed())  # a replay puts what it replayed: the entry's age stands
    assert cache.get("p", KEY) is not None
    ticks.now = 60.0
    assert cache.get("p", KEY) is None and len(cache) == 0


# ---- a real gateway --------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [True, False])
async def test_a_gateway_replays_from_memory_unless_told_not_to(setup: Setup, cached: bool) -> None:
    """The row is deleted by hand after the first call (as a forced resolve would): a gateway
    holding the result still replays it; with ``--replay-cache 0`` the retry reads the store,
    finds no record and executes anew."""
    setup.manifest()
    key = new_key()
    arguments: dict[str, Any] = {**INVOICE, "idempotency_key": key}
    async with setup.client(*(() if cached else NO_REPLAY_CACHE)) as client:
        first = await client.call_tool("create_invoice", arguments)
        await sql(setup.store, "DELETE FROM idempotency_records WHERE key = :k", {"k": key})
        retry = await client.call_tool("create_invoice", arguments)
    assert outcome_of(first) == "executed"
    if cached:
        assert outcome_of(retry) == "replayed" and retry.content == first.content
        assert len(setup.executions("create_invoice")) == 1
    else:
        assert outcome_of(retry) == "executed"
        assert len(setup.executions("create_invoice")) == 2


async def test_with_the_store_gone_a_cached_result_is_replayed_and_nothing_runs(tmp_path: Path) -> None:
    """The SQLite file deleted under a running gateway (``test_store_deleted``): a new key is
    refused, the retry of a key this gateway completed is answered from memory (nothing runs), and
    its lost audit line is logged."""
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    db = sqlite_path(setup.store)
    key = new_key()
    arguments: dict[str, Any] = {**INVOICE, "idempotency_key": key}
    async with gateway(setup) as gw:
        first = await gw.client.call_tool("create_invoice", arguments)
        for suffix in ("", "-wal", "-shm"):
            await anyio.Path(f"{db}{suffix}").unlink(missing_ok=True)
        fresh = await gw.client.call_tool("create_invoice", {**INVOICE, "idempotency_key": new_key()})
        retry = await gw.client.call_tool("create_invoice", arguments)
        await wait_for(lambda: "audit events (they are lost)" in gw.log_text())
    assert outcome_of(first) == "executed" and error_code(fresh) == "store_unavailable"
    assert outcome_of(retry) == "replayed" and retry.content == first.content
    assert len(setup.executions("create_invoice")) == 1
