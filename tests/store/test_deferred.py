"""``DeferredEvents``: a replay's audit line written after its answer, never lost to this
process's own reads, written before the gateway exits, and back-pressure on a stalled store.

The inner store is the in-memory one, gated where a test needs the writer to stall; a real
gateway's replays are covered wherever a test reads ``replayed`` events (the audit resources
right after a call, the store after the gateway exits).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import pytest

from gateway.errors import StoreUnavailable
from gateway.store import deferred
from gateway.store.deferred import DeferredEvents
from gateway.store.memory import MemoryStore
from gateway.store.records import Event, EventQuery


def replayed(n: int) -> Event:
    return Event(
        at=datetime(2026, 12, 3, 0, 0, n, tzinfo=UTC),
        principal="p",
        key=f"key-{n:016d}",
        server="s",
        tool="t",
        outcome="replayed",
    )


class GatedStore(MemoryStore):
    """Counts batches; a batch waits for ``gate`` while ``stall`` is set; ``down`` refuses them."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.stall = False
        self.down = False
        self.gate = anyio.Event()
        self.stalled = anyio.Event()

    async def append_events(self, events: Sequence[Event]) -> None:
        if self.down:
            raise StoreUnavailable("the store is down")
        if self.stall:
            self.stalled.set()
            await self.gate.wait()
        self.batches.append(len(events))
        await super().append_events(events)


async def written(store: MemoryStore | DeferredEvents) -> int:
    return len(await store.events(EventQuery(limit=100_000)))


async def test_without_a_writer_running_the_caller_writes_the_event_itself() -> None:
    store = DeferredEvents(MemoryStore())
    assert store.defer(replayed(1)) is False
    assert await written(store) == 0


async def test_a_read_right_after_a_deferred_event_sees_it() -> None:
    inner = GatedStore()
    store = DeferredEvents(inner)
    async with anyio.create_task_group() as tg:
        await tg.start(store.serve)
        assert store.defer(replayed(1)) and store.defer(replayed(2))
        assert [e.key for e in await store.events(EventQuery())] == [replayed(2).key, replayed(1).key]
        assert sum(inner.batches) == 2
        tg.cancel_scope.cancel()


async def test_events_queued_together_are_written_in_one_batch() -> None:
    inner = GatedStore()
    store = DeferredEvents(inner)
    async with anyio.create_task_group() as tg:
        await tg.start(store.serve)
        for n in range(5):
            assert store.defer(replayed(n))
        await store.flush()
        tg.cancel_scope.cancel()
    assert inner.batches == [5]


async def test_what_is_queued_when_the_writer_stops_is_written_before_it_returns() -> None:
    inner = GatedStore()
    inner.stall = True
    store = DeferredEvents(inner)
    async with anyio.create_task_group() as tg:
        await tg.start(store.serve)
        store.defer(replayed(1))
        await inner.stalled.wait()  # the first batch is being written...
        store.defer(replayed(2))  # ...and this one waits in the queue
        tg.cancel_scope.cancel()  # the gateway stops
        inner.gate.set()
    assert inner.batches == [1, 1] and await written(inner) == 2


async def test_a_store_that_refuses_the_batch_loses_those_lines_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = GatedStore()
    inner.down = True
    store = DeferredEvents(inner)
    async with anyio.create_task_group() as tg:
        await tg.start(store.serve)
        store.defer(replayed(1))
        with anyio.fail_after(10):
            await store.flush()  # returns: the batch was given up on, not left hanging
        inner.down = False
        store.defer(replayed(2))
        assert [e.key for e in await store.events(EventQuery())] == [replayed(2).key]
        tg.cancel_scope.cancel()
    assert "could not write 1 audit events (they are lost): the store is down" in caplog.text


async def test_a_stalled_store_turns_deferral_back_into_writing_in_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deferred, "MAX_QUEUED", 3)
    inner = GatedStore()
    inner.stall = True
    store = DeferredEvents(inner)
    async with anyio.create_task_group() as tg:
        await tg.start(store.serve)
        assert store.defer(replayed(0))
        await inner.stalled.wait()  # that one is being written; three more fill the queue
        assert [store.defer(replayed(n)) for n in range(1, 5)] == [True, True, True, False]
        inner.gate.set()
        await store.flush()
        tg.cancel_scope.cancel()
    assert inner.batches == [1, 3]
