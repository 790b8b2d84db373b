"""The store contract: every backend (SQLite, PostgreSQL, memory) passes the same tests.

The clock is injected (fixed datetimes); nothing sleeps. Concurrency is real: asyncio tasks
sharing the SQLite group commit or PostgreSQL's pool, and separate OS processes on one database.
The in-memory store runs the same suite because the model checker (``tests/model``) proves the
protocol over it: what holds there holds for the SQL the other two run.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from gateway.errors import StoreUnavailable
from gateway.store import Claim, Event, EventQuery, Record, RecordState, Settled, Store, open_store
from gateway.store.memory import MemoryStore
from gateway.store.sql import SqlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
RETENTION = timedelta(hours=24)
RESULT = {
    "content": [{"type": "text", "text": "invoice INV-1 created"}],
    "structuredContent": {"id": "INV-1"},
}


def claim(
    key: str = "key-0000000000000001", *, owner: str = "owner-a", principal: str = "alice", **kw: Any
) -> Claim:
    now = kw.pop("now", T0)
    values: dict[str, Any] = {
        "principal": principal,
        "key": key,
        "server": "payments",
        "tool": "create_invoice",
        "fingerprint": "f" * 64,
        "owner": owner,
        "now": now,
        "lease_expires_at": now + LEASE,
        "expires_at": now + RETENTION,
    }
    values.update(kw)
    return Claim(**values)


def event(outcome: str = "executed", *, key: str | None = "key-0000000000000001", **kw: Any) -> Event:
    values: dict[str, Any] = {
        "at": T0,
        "principal": "alice",
        "key": key,
        "server": "payments",
        "tool": "create_invoice",
        "outcome": outcome,
        "fingerprint": "f" * 64,
        "duration_ms": 1.5,
        "arguments": {"amount": 10, "card_number": "***"},
    }
    values.update(kw)
    return Event(**values)


async def complete(store: Store, held: Record, *, fence: int | None = None, **kw: Any) -> Settled:
    """The holder of ``held`` completes it (``fence``: pretend to hold another fence)."""
    at = kw.pop("executed_at", T0 + timedelta(seconds=2))
    values: dict[str, Any] = {
        "result": RESULT,
        "is_error": False,
        "executed_at": at,
        "expires_at": at + RETENTION,
        "tombstone_until": None,
        "event": event(),
    }
    values.update(kw)
    return await store.complete(held.principal, held.key, held.fence if fence is None else fence, **values)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"],
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL to an empty database of the backend under test (memory: no URL)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'gateway.db'}"
        return
    if backend == "memory":
        yield "memory"
        return
    import pg

    with pg.fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s: Store = MemoryStore(clock=lambda: T0) if store_url == "memory" else SqlStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """For what only the SQL backends have: files, processes, drivers, reopening."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'gateway.db'}"
        return
    import pg

    with pg.fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'gateway.db'}")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- claim -------------------------------------------------------------------------------------


async def test_a_first_claim_acquires_an_in_progress_record_with_a_fresh_fence(store: Store) -> None:
    result = await store.claim(claim())

    assert result.acquired
    record = result.record
    assert (record.state, record.lease_owner) == (RecordState.IN_PROGRESS, "owner-a")
    assert record.fence > 0
    assert record.created_at == T0 and record.expires_at == T0 + RETENTION
    assert record.lease_expires_at == T0 + LEASE
    assert await store.get("alice", record.key) == record


async def test_a_second_claim_returns_the_existing_record_without_acquiring(store: Store) -> None:
    first = await store.claim(claim(owner="owner-a"))

    second = await store.claim(claim(owner="owner-b", now=T0 + timedelta(seconds=1)))

    assert not second.acquired
    assert second.record == first.record


async def test_the_same_key_of_two_principals_is_two_keys(store: Store) -> None:
    assert (await store.claim(claim(principal="alice"))).acquired
    assert (await store.claim(claim(principal="bob"))).acquired
    assert await store.get("carol", "key-0000000000000001") is None


async def test_fifty_concurrent_claims_on_one_key_acquire_exactly_once(store: Store) -> None:
    results = await asyncio.gather(*(store.claim(claim(owner=f"owner-{i}")) for i in range(50)))

    winners = [r for r in results if r.acquired]
    assert len(winners) == 1
    assert {r.record.lease_owner for r in results} == {winners[0].record.lease_owner}


async def test_claims_in_flight_together_on_sqlite_share_commits_and_fsyncs(sqlite_store: SqlStore) -> None:
    results = await asyncio.gather(*(sqlite_store.claim(claim(f"key-{i:016d}")) for i in range(40)))

    assert all(r.acquired for r in results)
    assert len({r.record.fence for r in results}) == 40
    # Concurrent for real: the claims waited together and were written in shared rounds.
    assert sqlite_store._group.rounds < 40
    for r in results:
        assert await sqlite_store.get("alice", r.record.key) == r.record


async def test_claims_on_sqlite_commit_with_synchronous_full(sqlite_store: SqlStore) -> None:
    await sqlite_store.claim(claim())
    conn = sqlite_store._durable_connection()
    cursor = conn.cursor()
    try:
        # 2 = FULL: in WAL mode the log is fsynced at every commit of this connection.
        assert cursor.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        cursor.close()


_CLAIMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from datetime import datetime, timedelta, timezone
    from gateway.store import Claim
    from gateway.store.sql import SqlStore

    async def main(url, owner, keys):
        store = SqlStore(url, busy_timeout=30)
        await store.open()
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
        claims = [
            Claim("alice", k, "payments", "create_invoice", "f" * 64, f"{owner}-{i}", t0,
                  t0 + timedelta(seconds=30), t0 + timedelta(hours=1))
            for k in keys for i in range(5)
        ]
        results = await asyncio.gather(*(store.claim(c) for c in claims))
        await store.close()
        print(json.dumps([r.record.key for r in results if r.acquired]), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    """
)


def test_claims_from_two_processes_on_one_database_acquire_each_key_exactly_once(sql_url: str) -> None:
    store_url = sql_url
    # Both processes also create the schema at the same moment (open) on an empty database.
    keys = [f"key-{i:016d}" for i in range(40)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, store_url, f"proc{n}", json.dumps(keys)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:  # both are ready: release them together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        finished = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in finished]

    acquired = [key for out, _ in finished for key in json.loads(out.strip().splitlines()[-1])]
    assert sorted(acquired) == keys


# -- complete ------------------------------------------------------------------------------------


async def test_the_holder_completes_and_the_event_is_written_with_it(store: Store) -> None:
    held = (await store.claim(claim())).record
    done_at = T0 + timedelta(seconds=2)

    settled = await complete(store, held, executed_at=done_at, expires_at=done_at + RETENTION)

    assert settled is Settled.COMPLETED
    record = await store.get("alice", held.key)
    assert record is not None
    assert (record.state, record.result, record.is_error) == (RecordState.COMPLETED, RESULT, False)
    assert record.first_executed_at == done_at
    assert record.expires_at == done_at + RETENTION  # retention counts from the result
    assert record.lease_expires_at is None
    [written] = await store.events(EventQuery(principal="alice"))
    assert (written.outcome, written.arguments) == ("executed", {"amount": 10, "card_number": "***"})


async def test_a_completion_with_the_wrong_fence_is_rejected_and_writes_no_event(store: Store) -> None:
    held = (await store.claim(claim())).record

    assert await complete(store, held, fence=held.fence + 1) is Settled.LOST

    assert (await store.get("alice", held.key)) == held
    assert await store.events(EventQuery()) == []


async def test_a_completed_record_cannot_be_completed_again(store: Store) -> None:
    held = (await store.claim(claim())).record
    assert await complete(store, held) is Settled.COMPLETED

    assert await complete(store, held, result={"content": []}) is Settled.LOST

    record = await store.get("alice", held.key)
    assert record is not None and record.result == RESULT


async def test_a_late_result_settles_a_key_marked_unknown_under_the_holders_own_fence(store: Store) -> None:
    held = (await store.claim(claim())).record
    dead_at = T0 + LEASE + timedelta(seconds=1)
    assert await store.mark_unknown(
        "alice", held.key, held.fence, event=event("unknown"), lease_dead_at=dead_at
    )

    assert await complete(store, held) is Settled.LATE

    record = await store.get("alice", held.key)
    assert record is not None and (record.state, record.result) == (RecordState.COMPLETED, RESULT)
    newest = (await store.events(EventQuery()))[0]
    assert (newest.outcome, newest.detail) == ("executed", {"settled_late": True})


async def test_a_late_result_never_settles_a_key_taken_over_or_resolved(store: Store) -> None:
    held = (await store.claim(claim())).record
    assert await store.mark_unknown("alice", held.key, held.fence, event=event("unknown"))
    unknown = await store.get("alice", held.key)
    assert unknown is not None
    taken = await store.take_over(claim(owner="owner-b", now=T0 + timedelta(seconds=1)), expected=unknown)
    assert taken is not None

    assert await complete(store, held) is Settled.LOST
    assert await store.get("alice", held.key) == taken


# -- take over ----------------------------------------------------------------------------------


async def completed(store: Store, key: str = "key-0000000000000001", **kw: Any) -> Record:
    held = (await store.claim(claim(key, **kw))).record
    assert await complete(store, held, executed_at=T0) is Settled.COMPLETED
    record = await store.get("alice", key)
    assert record is not None
    return record


async def test_take_over_bumps_the_fence_and_the_stale_holder_can_no_longer_complete(store: Store) -> None:
    stale = await completed(store)
    later = T0 + timedelta(hours=25)

    taken = await store.take_over(claim(owner="owner-b", now=later), expected=stale)

    assert taken is not None
    assert (taken.fence, taken.lease_owner, taken.state) == (
        stale.fence + 1,
        "owner-b",
        RecordState.IN_PROGRESS,
    )
    assert taken.created_at == later and taken.expires_at == later + RETENTION
    assert taken.result is None and taken.first_executed_at is None and not taken.is_error
    assert await store.get("alice", stale.key) == taken
    assert await complete(store, stale) is Settled.LOST
    assert await complete(store, taken) is Settled.COMPLETED


async def test_take_over_is_fenced_so_only_one_of_many_racers_wins(store: Store) -> None:
    record = await completed(store)

    racers = await asyncio.gather(
        *(store.take_over(claim(owner=f"owner-{i}"), expected=record) for i in range(10))
    )

    assert len([r for r in racers if r is not None]) == 1
    assert await store.take_over(claim(owner="late"), expected=record) is None


async def test_take_over_never_takes_a_live_lease_whatever_the_retention(store: Store) -> None:
    running = (await store.claim(claim(expires_at=T0 + timedelta(seconds=1)))).record
    past_retention = T0 + timedelta(seconds=5)  # the lease (30 s) is still alive

    assert await store.take_over(claim(owner="owner-b", now=past_retention), expected=running) is None
    assert await store.get("alice", running.key) == running

    dead = T0 + LEASE + timedelta(seconds=1)
    taken = await store.take_over(claim(owner="owner-b", now=dead), expected=running)
    assert taken is not None and taken.fence == running.fence + 1


async def test_take_over_needs_the_record_exactly_as_read(store: Store) -> None:
    held = (await store.claim(claim())).record
    assert await store.mark_unknown("alice", held.key, held.fence, event=event("unknown"))

    # Read as IN_PROGRESS, but it is UNKNOWN now: nothing happens.
    assert await store.take_over(claim(owner="owner-b", now=T0 + LEASE * 2), expected=held) is None
    assert await store.take_over(claim(key="key-never-claimed-0"), expected=held) is None


# -- mark unknown, renew, release -----------------------------------------------------------------


async def test_mark_unknown_stops_the_holder_from_completing_normally(store: Store) -> None:
    held = (await store.claim(claim())).record

    assert await store.mark_unknown("alice", held.key, held.fence, event=event("unknown"))

    record = await store.get("alice", held.key)
    assert record is not None and record.state is RecordState.UNKNOWN and record.lease_expires_at is None
    assert not await store.mark_unknown("alice", held.key, held.fence, event=event("unknown"))
    assert not await store.release("alice", held.key, held.fence, event=None)
    assert [e.outcome for e in await store.events(EventQuery())] == ["unknown"]


async def test_mark_unknown_with_a_stale_fence_does_nothing(store: Store) -> None:
    held = (await store.claim(claim())).record

    assert not await store.mark_unknown("alice", held.key, held.fence + 1, event=event("unknown"))
    assert await store.get("alice", held.key) == held


async def test_another_process_marks_unknown_only_a_dead_lease(store: Store) -> None:
    held = (await store.claim(claim())).record

    alive_at = T0 + LEASE - timedelta(seconds=1)
    assert not await store.mark_unknown(
        "alice", held.key, held.fence, event=event("unknown"), lease_dead_at=alive_at
    )
    # The holder renewed meanwhile: still alive at the time the other process judged it dead.
    assert await store.renew("alice", held.key, held.fence, T0 + LEASE * 3)
    assert not await store.mark_unknown(
        "alice", held.key, held.fence, event=event("unknown"), lease_dead_at=T0 + LEASE * 2
    )
    assert await store.mark_unknown(
        "alice", held.key, held.fence, event=event("unknown"), lease_dead_at=T0 + LEASE * 3
    )
    assert [e.outcome for e in await store.events(EventQuery())] == ["unknown"]


async def test_only_the_holder_renews_its_lease(store: Store) -> None:
    held = (await store.claim(claim())).record
    later = T0 + timedelta(minutes=5)

    assert not await store.renew("alice", held.key, held.fence + 1, later)
    assert await store.renew("alice", held.key, held.fence, later)
    record = await store.get("alice", held.key)
    assert record is not None and record.lease_expires_at == later

    await complete(store, held)
    assert not await store.renew("alice", held.key, held.fence, later)


async def test_release_deletes_only_with_the_right_fence(store: Store) -> None:
    held = (await store.claim(claim())).record

    assert not await store.release("alice", held.key, held.fence + 1, event=None)
    assert await store.get("alice", held.key) == held
    assert await store.release("alice", held.key, held.fence, event=event("downstream_unavailable"))
    assert await store.get("alice", held.key) is None
    assert [e.outcome for e in await store.events(EventQuery())] == ["downstream_unavailable"]
    assert (await store.claim(claim(owner="owner-b"))).acquired


async def test_release_never_drops_a_stored_result(store: Store) -> None:
    held = (await store.claim(claim())).record
    await complete(store, held)

    assert not await store.release("alice", held.key, held.fence, event=None)
    record = await store.get("alice", held.key)
    assert record is not None and record.state is RecordState.COMPLETED


async def test_a_holder_of_a_deleted_incarnation_cannot_complete_the_next_one(store: Store) -> None:
    old = (await store.claim(claim())).record
    assert await store.release("alice", old.key, old.fence, event=None)
    new = (await store.claim(claim(owner="owner-b"))).record
    assert new.fence != old.fence
    assert await complete(store, old) is Settled.LOST
    assert await complete(store, new) is Settled.COMPLETED


# -- resolve -----------------------------------------------------------------------------------


async def unknown_record(store: Store, key: str = "key-0000000000000001") -> Record:
    held = (await store.claim(claim(key))).record
    assert await store.mark_unknown("alice", key, held.fence, event=event("unknown", key=key))
    record = await store.get("alice", key)
    assert record is not None
    return record


async def test_resolve_as_failed_deletes_the_record_so_a_retry_executes(store: Store) -> None:
    record = await unknown_record(store)

    before = await store.resolve(
        "alice",
        record.key,
        expected=record,
        result=None,
        is_error=False,
        now=T0 + timedelta(hours=1),
        event=event("resolved"),
    )

    assert before is not None and before.state is RecordState.UNKNOWN
    assert await store.get("alice", record.key) is None
    assert (await store.claim(claim(owner="owner-b"))).acquired
    assert [e.outcome for e in await store.events(EventQuery())] == ["resolved", "unknown"]


async def test_resolve_as_completed_stores_the_result_for_a_retention_from_now(store: Store) -> None:
    record = await unknown_record(store)
    resolved_at = T0 + timedelta(days=3)  # long after the claim's own retention

    after = await store.resolve(
        "alice",
        record.key,
        expected=record,
        result=RESULT,
        is_error=False,
        now=resolved_at,
        event=event("resolved"),
    )

    assert after is not None
    assert await store.get("alice", record.key) == after
    assert (after.state, after.result, after.first_executed_at) == (
        RecordState.COMPLETED,
        RESULT,
        resolved_at,
    )
    assert after.expires_at == resolved_at + RETENTION  # replayed, not immediately expired
    assert await complete(store, record, result={"content": []}) is Settled.LOST


async def test_resolve_is_fenced_on_the_record_as_read(store: Store) -> None:
    record = await unknown_record(store)
    # A gateway re-sends a forwarded key meanwhile: the key is taken over (fence + 1).
    taken = await store.take_over(claim(owner="owner-b", now=T0 + timedelta(seconds=1)), expected=record)
    assert taken is not None

    for result in (None, RESULT):
        got = await store.resolve(
            "alice",
            record.key,
            expected=record,
            result=result,
            is_error=False,
            now=T0,
            event=event("resolved"),
        )
        assert got is None
    assert await store.get("alice", record.key) == taken
    assert [e.outcome for e in await store.events(EventQuery())] == ["unknown"]


async def test_resolve_of_a_missing_key_returns_none_and_writes_nothing(store: Store) -> None:
    record = await unknown_record(store)
    await store.resolve(
        "alice", record.key, expected=record, result=None, is_error=False, now=T0, event=event("resolved")
    )

    got = await store.resolve(
        "alice", record.key, expected=record, result=None, is_error=False, now=T0, event=event("resolved")
    )

    assert got is None
    assert [e.outcome for e in await store.events(EventQuery())] == ["resolved", "unknown"]


# -- purge -------------------------------------------------------------------------------------


async def test_purge_ends_only_completed_records_and_leaves_tombstones_for_rejecting_tools(
    store: Store,
) -> None:
    now = T0 + timedelta(days=2)
    for key in ("expired-plain-0000", "expired-plain-0001", "expired-plain-0002"):
        await completed(store, key)
    live = await completed(store, "live-000000000000")
    assert await store.renew("alice", live.key, live.fence, now) is False  # (completed: no lease)
    held = (await store.claim(claim("live-000000000001"))).record
    await complete(store, held, executed_at=T0, expires_at=now + timedelta(seconds=1))
    held = (await store.claim(claim("tombstone-future-0"))).record
    await complete(
        store, held, executed_at=T0, expires_at=T0 + RETENTION, tombstone_until=now + timedelta(days=7)
    )
    held = (await store.claim(claim("tombstone-past-000"))).record
    await complete(store, held, executed_at=T0, expires_at=T0 + RETENTION, tombstone_until=now)
    await unknown_record(store, "unknown-expired-00")
    await store.claim(claim("running-long-0000", lease_expires_at=now + timedelta(seconds=5)))
    await store.claim(claim("dead-lease-000000"))  # a holder that died: it turns unknown, never ends

    deleted = await store.purge(now, batch=2)

    assert deleted == 5  # three plain, live-0 (expired at T0+24h), and the tombstone past its date
    for gone in ("expired-plain-0000", "expired-plain-0001", "expired-plain-0002", "tombstone-past-000"):
        assert await store.get("alice", gone) is None
    unknown = await store.get("alice", "unknown-expired-00")
    assert unknown is not None and unknown.state is RecordState.UNKNOWN
    running = await store.get("alice", "running-long-0000")
    assert running is not None and running.state is RecordState.IN_PROGRESS
    dead = await store.get("alice", "dead-lease-000000")
    assert dead is not None and dead.state is RecordState.IN_PROGRESS
    still = await store.get("alice", "live-000000000001")
    assert still is not None and still.state is RecordState.COMPLETED
    tomb = await store.get("alice", "tombstone-future-0")
    assert tomb is not None
    assert (tomb.state, tomb.result, tomb.fingerprint) == (RecordState.EXPIRED, None, "f" * 64)

    assert await store.purge(now, batch=2) == 0
    years = now + timedelta(days=3650)
    assert await store.purge(years, batch=2) == 2  # the tombstone and the other completed one
    for kept in ("unknown-expired-00", "running-long-0000", "dead-lease-000000"):
        assert await store.get("alice", kept) is not None  # never: unknown never expires


# -- secret and clock ------------------------------------------------------------------------------


async def test_the_first_secret_check_binds_the_store_and_another_is_refused(store: Store) -> None:
    assert await store.bind_secret("a" * 32)
    assert await store.bind_secret("a" * 32)
    assert not await store.bind_secret("b" * 32)


async def test_the_store_clock_is_utc_now_or_the_databases(store: Store) -> None:
    await store.sync_clock()
    now = store.now()
    assert now.tzinfo is not None
    if not isinstance(store, MemoryStore):
        assert abs((now - datetime.now(UTC)).total_seconds()) < 60  # the same machine: no skew


# -- events and counts -------------------------------------------------------------------------


async def test_events_are_newest_first_and_filtered(store: Store) -> None:
    for i, (principal, tool, outcome) in enumerate(
        [
            ("alice", "create_invoice", "executed"),
            ("alice", "create_invoice", "replayed"),
            ("alice", "refund", "executed"),
            ("bob", "create_invoice", "executed"),
            ("alice", "create_invoice", "conflict"),
        ]
    ):
        await store.append_event(
            event(outcome, principal=principal, tool=tool, key=f"key-{i:016d}", at=T0 + timedelta(seconds=i))
        )

    alice = await store.events(EventQuery(principal="alice"))
    assert [e.key for e in alice] == [
        "key-0000000000000004",
        "key-0000000000000002",
        "key-0000000000000001",
        "key-0000000000000000",
    ]
    assert alice[0].at == T0 + timedelta(seconds=4) and alice[0].id is not None
    assert [e.outcome for e in await store.events(EventQuery(principal="alice", tool="create_invoice"))] == [
        "conflict",
        "replayed",
        "executed",
    ]
    assert [e.key for e in await store.events(EventQuery(principal="alice", key="key-0000000000000002"))] == [
        "key-0000000000000002"
    ]
    assert [e.tool for e in await store.events(EventQuery(outcome="executed"))] == [
        "create_invoice",
        "refund",
        "create_invoice",
    ]
    assert len(await store.events(EventQuery(since=T0 + timedelta(seconds=3)))) == 2
    assert len(await store.events(EventQuery(limit=2))) == 2
    assert await store.events(EventQuery(principal="carol")) == []


async def test_an_event_round_trips_every_field(store: Store) -> None:
    sent = event(
        "conflict", detail={"reason": "fingerprint"}, cost=0.3, duration_ms=None, arguments=None, key=None
    )
    await store.append_event(sent)

    [got] = await store.events(EventQuery())

    assert got.id is not None
    assert got == Event(**{**{f: getattr(sent, f) for f in sent.__slots__}, "id": got.id})


async def test_events_appended_together_are_all_written_in_order(store: Store) -> None:
    batch = [event("replayed", at=T0 + timedelta(seconds=s), cost=float(s)) for s in range(3)]
    await store.append_events(batch)
    await store.append_events([])
    got = await store.events(EventQuery())
    assert [e.cost for e in reversed(got)] == [0.0, 1.0, 2.0]
    assert len({e.id for e in got}) == 3


async def test_outcome_counts_group_by_tool_and_outcome_with_spend(store: Store) -> None:
    rows = [
        ("alice", "create_invoice", "executed", 0.3, 0),
        ("alice", "create_invoice", "replayed", 0.3, 1),
        ("alice", "create_invoice", "replayed", 0.3, 2),
        ("alice", "refund", "executed", None, 3),
        ("bob", "create_invoice", "replayed", 0.3, 4),
    ]
    for principal, tool, outcome, cost, s in rows:
        await store.append_event(
            event(outcome, principal=principal, tool=tool, cost=cost, at=T0 + timedelta(seconds=s))
        )

    counts = await store.outcome_counts("alice", None)

    assert counts == [
        ("create_invoice", "executed", 1, pytest.approx(0.3)),
        ("create_invoice", "replayed", 2, pytest.approx(0.6)),
        ("refund", "executed", 1, 0.0),
    ]
    assert await store.outcome_counts("alice", T0 + timedelta(seconds=2)) == [
        ("create_invoice", "replayed", 1, pytest.approx(0.3)),
        ("refund", "executed", 1, 0.0),
    ]
    everyone = await store.outcome_counts(None, None)
    assert ("create_invoice", "replayed", 3, pytest.approx(0.9)) in everyone


async def test_count_unknown_counts_open_unknown_records_per_principal(store: Store) -> None:
    for principal, key in [
        ("alice", "key-a-000000000001"),
        ("alice", "key-a-000000000002"),
        ("bob", "key-b-000000000001"),
    ]:
        held = (await store.claim(claim(key, principal=principal))).record
        await store.mark_unknown(
            principal, key, held.fence, event=event("unknown", principal=principal, key=key)
        )
    await store.claim(claim("key-a-000000000003"))

    assert await store.count_unknown("alice") == 2
    assert await store.count_unknown("bob") == 1
    assert await store.count_unknown(None) == 3


# -- lifecycle ---------------------------------------------------------------------------------


async def test_a_reopened_store_still_has_its_records(sql_url: str) -> None:
    first = open_store(sql_url)
    await first.open()
    held = (await first.claim(claim())).record
    await complete(first, held, is_error=True)
    await first.close()

    second = open_store(sql_url)
    await second.open()
    try:
        record = await second.get("alice", held.key)
        assert record is not None
        assert (record.state, record.result, record.is_error) == (RecordState.COMPLETED, RESULT, True)
    finally:
        await second.close()


async def test_several_replicas_can_open_the_same_empty_database_at_once(sql_url: str) -> None:
    store_url = sql_url
    stores = [SqlStore(store_url) for _ in range(4)]

    await asyncio.gather(*(s.open() for s in stores))

    try:
        assert (await stores[0].claim(claim())).acquired
        assert not (await stores[3].claim(claim(owner="owner-b"))).acquired
        engine = create_engine(store_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, version FROM schema_version")).all() == [(1, 1)]
        engine.dispose()
    finally:
        for s in stores:
            await s.close()


# -- the store is down -------------------------------------------------------------------------


async def test_a_sqlite_file_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SqlStore(f"sqlite:///{blocker / 'gateway.db'}")

    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_a_sqlite_database_locked_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    store = SqlStore(f"sqlite:///{path}", busy_timeout=0.05)
    await store.open()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.claim(claim())
        assert "locked" in str(raised.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await store.claim(claim())).acquired  # and it recovers once the lock is gone
    await store.close()


@pytest.mark.postgres
async def test_a_postgresql_server_that_is_down_is_unavailable_and_the_password_stays_secret() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = SqlStore(f"postgresql+psycopg://idem:hunter2-secret@127.0.0.1:{port}/idem", busy_timeout=1)

    with pytest.raises(StoreUnavailable) as raised:
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.claim(claim())

    assert "hunter2-secret" not in str(raised.value)
    assert raised.value.code == "store_unavailable"
    await store.close()


async def test_an_unparseable_store_url_is_refused() -> None:
    with pytest.raises(StoreUnavailable):
        SqlStore("not a url")


@pytest.mark.postgres
async def test_a_postgresql_connection_killed_while_idle_is_replaced_without_an_error(
    postgres_url: str,
) -> None:
    """No ping per call: a pooled connection the server dropped is found dead on use, thrown
    away, and the call retried once on a fresh one."""
    import pg
    import psycopg

    with pg.fresh_database(postgres_url) as url:
        store = SqlStore(url)
        await store.open()
        try:
            assert (await store.claim(claim("key-before-kill-00"))).acquired
            name = url.rsplit("/", 1)[1]
            with psycopg.connect(pg._admin_conninfo(postgres_url), autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                ).fetchone()
            assert killed is not None and killed[0] >= 1
            assert (await store.claim(claim("key-after-kill-000"))).acquired
            assert await store.get("alice", "key-before-kill-00") is not None
        finally:
            await store.close()
