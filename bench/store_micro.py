"""The store's hot-path calls in isolation, on SQLite in a temp dir (benchmark tooling only).

    python bench/store_micro.py [--n 2000]

Prints p50/mean (ms) of: a bare ``anyio.to_thread.run_sync`` hop; ``claim`` + ``complete`` of a
fresh key (the durable path's store work) and ``claim`` of a completed key + ``append_event``
(the replay path's), both through the async API (thread hop included) and called synchronously
on the worker functions (the SQLite work alone).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from gateway.store import open_store
from gateway.store.records import Claim, Event

RESULT = {"content": [{"type": "text", "text": "0"}], "structuredContent": {"result": 0}, "isError": False}


def claim_for(key: str) -> Claim:
    now = datetime.now(UTC)
    return Claim(
        principal="bench",
        key=key,
        server="trivial",
        tool="noop",
        fingerprint="f" * 64,
        owner="bench:1",
        now=now,
        lease_expires_at=now + timedelta(seconds=10),
        expires_at=now + timedelta(hours=24),
    )


def event_for(key: str, outcome: str) -> Event:
    return Event(
        at=datetime.now(UTC),
        principal="bench",
        key=key,
        server="trivial",
        tool="noop",
        outcome=outcome,
        fingerprint="f" * 64,
        duration_ms=1.0,
        arguments={"x": 0},
    )


def line(label: str, ms: list[float]) -> None:
    print(f"{label:<44}{statistics.median(ms):>9.4f}{statistics.fmean(ms):>9.4f}")


async def timeit(n: int, op: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="idem-store-micro-"))
    store: Any = open_store(f"sqlite:///{tmp / 'gateway.db'}")
    await store.open()
    print(f"{'(ms)':<44}{'p50':>9}{'mean':>9}")
    line("to_thread hop (no-op)", await timeit(n, lambda i: anyio.to_thread.run_sync(lambda: None)))

    async def durable(i: int) -> None:
        key = f"d-{uuid.uuid4()}"
        got = await store.claim(claim_for(key))
        ev = event_for(key, "executed")
        await store.complete(
            "bench", key, got.record.fence, result=RESULT, is_error=False, executed_at=ev.at, event=ev
        )

    async def durable_sync(i: int) -> None:
        key = f"s-{uuid.uuid4()}"
        got = store._run(store._claim, claim_for(key))
        ev = event_for(key, "executed")
        store._run(store._complete, "bench", key, got.record.fence, RESULT, False, ev.at, ev)

    async def claim_only(i: int) -> None:
        await store.claim(claim_for(f"c-{uuid.uuid4()}"))

    async def claim_only_sync(i: int) -> None:
        store._run(store._claim, claim_for(f"c-{uuid.uuid4()}"))

    await timeit(n // 4, durable)  # warm-up: worker threads, pool connections, page cache
    line("claim (async)", await timeit(n, claim_only))
    line("claim (sync, no hop)", await timeit(n, claim_only_sync))
    line("durable: claim + complete (async)", await timeit(n, durable))
    line("durable: claim + complete (sync, no hop)", await timeit(n, durable_sync))

    key = f"r-{uuid.uuid4()}"
    await durable_sync(0)
    got = await store.claim(claim_for(key))
    ev = event_for(key, "executed")
    await store.complete(
        "bench", key, got.record.fence, result=RESULT, is_error=False, executed_at=ev.at, event=ev
    )

    async def replay(i: int) -> None:
        res = await store.claim(claim_for(key))
        assert not res.acquired
        await store.append_event(event_for(key, "replayed"))

    async def replay_sync(i: int) -> None:
        store._run(store._claim, claim_for(key))
        store._run(store._append_event, event_for(key, "replayed"))

    line("replay: claim(conflict) + append_event (async)", await timeit(n, replay))
    line("replay: claim + append_event (sync, no hop)", await timeit(n, replay_sync))
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    anyio.run(main, parser.parse_args().n)
