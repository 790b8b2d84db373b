"""The store's clock against a measurement taken by a paused process.

A replica measures the database's time often (every third of a lease). If the process is
paused between reading its own clock and reading the answer (SIGSTOP, a stalled store, a VM
descheduled), half the pause looks like a difference between the clocks. Taken as the offset,
a 12 s pause puts the replica's clock 6 s ahead: it sees a live lease as dead and a result's
retention over 6 s early, so a retry of a key it should replay runs again. Found by the chaos
test (a duplicate of a 5 s retention key, 13 s after its first execution, on three replicas
on PostgreSQL with stalls and SIGSTOPs). Such a measurement is discarded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import pg
import pytest

from gateway.store.clock import MAX_UNCERTAINTY, StoreClock
from gateway.store.sql import SqlStore


def test_a_measurement_spanning_a_pause_leaves_the_offset_as_it_was() -> None:
    clock = StoreClock()
    now = time.time()
    clock.observe(now - 0.002, now + 3.0, now)  # a database 3 s ahead, measured in 2 ms
    assert clock.offset == pytest.approx(3.001, abs=0.01)
    # Paused 12 s after reading the local clock, before the query ran: the database said
    # "now + 3" at the end of the pause, which the midpoint rule would read as 9 s.
    clock.observe(now - 12.0, now + 3.0, now)
    assert clock.offset == pytest.approx(3.001, abs=0.01)
    # Paused after the query, before reading the answer: it would read as -3 s.
    clock.observe(now - 12.0, now - 12.0 + 3.0, now)
    assert clock.offset == pytest.approx(3.001, abs=0.01)
    # A sure measurement is taken again.
    clock.observe(now - 0.001, now + 1.0, now)
    assert clock.offset == pytest.approx(1.0005, abs=0.01)


def test_an_unsure_measurement_is_taken_only_while_no_surer_one_is_in_use() -> None:
    clock = StoreClock()
    now = time.time()
    clock.observe(now - 2.0, now + 5.0, now)  # the first, +/- 1 s: better than nothing
    assert clock.offset == pytest.approx(6.0, abs=0.01)
    clock.observe(now - 12.0, now + 5.0, now)  # less sure than the one in use: discarded
    assert clock.offset == pytest.approx(6.0, abs=0.01)
    clock.observe(now - 2 * MAX_UNCERTAINTY * 0.99, now + 5.0, now)  # within the bound: taken
    assert clock.offset == pytest.approx(5.0 + MAX_UNCERTAINTY * 0.99, abs=0.01)
    clock.observe(now - 2 * MAX_UNCERTAINTY * 1.01, now + 9.0, now)  # past it: discarded now
    assert clock.offset == pytest.approx(5.0 + MAX_UNCERTAINTY * 0.99, abs=0.01)


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    with pg.fresh_database(postgres_url) as url:
        yield url


@pytest.fixture
async def store(database: str) -> AsyncIterator[SqlStore]:
    opened = SqlStore(database)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _paused_once(pause: float, *, before_query: bool) -> Callable[[], float]:
    """This process's clock as a paused process reads it during one measurement: the pause
    falls before the query (the first reading is ``pause`` old when the query runs) or after
    it (the second reading comes ``pause`` late)."""
    readings = iter(range(2))

    def local() -> float:
        n = next(readings, None)
        if n == 0 and before_query:
            return time.time() - pause
        if n == 1 and not before_query:
            return time.time() + pause
        return time.time()

    return local


@pytest.mark.postgres
@pytest.mark.parametrize("before_query", [True, False], ids=["paused-before-the-query", "paused-after-it"])
async def test_a_replica_paused_while_it_reads_the_databases_time_keeps_its_clock(
    store: SqlStore, before_query: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.sync_clock()
    assert abs((store.now() - datetime.now(UTC)).total_seconds()) < 1  # one machine: no skew
    monkeypatch.setattr(store.clock, "local", _paused_once(12.0, before_query=before_query))
    await store.sync_clock()
    # Taken as measured, the pause would put this clock 6 s ahead of or behind the database's.
    assert abs((store.now() - datetime.now(UTC)).total_seconds()) < 1
