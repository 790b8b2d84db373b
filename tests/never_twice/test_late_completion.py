"""Issue 8, items 5-6: a result the holder has is not lost while the store can take it.

- A store stall during completion (another process holds SQLite's write lock past the
  gateway's busy timeout): the caller gets ``executed``, and once the stall ends the record is
  ``completed`` with an ``executed`` event, never ``unknown``.
- The same stall while a second gateway's retry finds the lease dead and marks the key unknown:
  the first gateway's late completion settles it (``unknown`` → completed, the ``executed``
  event says ``settled_late``), and a later retry replays.
- A holder paused past its lease (SIGSTOP): the other gateway's retry gets ``outcome_unknown``;
  when the holder resumes with the result, it settles the key the same way.

Every step is gated on an observable fact (the ledger, the store, the gateway's log, an answer),
never on a sleep.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio

from tests.never_twice.kit import (
    WAIT,
    Running,
    WriteLock,
    events,
    gateway,
    now_us,
    record,
    sqlite_path,
    wait_record,
)
from tests.support import Setup, error_code, new_key, outcome, wait_for

PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")


def finished(setup: Setup, label: str) -> bool:
    return any(
        line.get("phase") == "finished" and line["args"]["label"] == label for line in setup.ledger_lines()
    )


def failed_to_store_since(gw: Running, offset: int) -> bool:
    """A warning or error in the gateway's log after ``offset`` that is not about a lease renewal:
    the completion met the stalled store."""
    return any(PROBLEM.search(line) and "renew" not in line for line in gw.log_text()[offset:].splitlines())


def completed(rec: dict[str, Any] | None) -> bool:
    return rec is not None and rec["state"] == "completed"


def sqlite_setup(tmp_path: Path) -> Setup:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    return setup


async def test_a_store_stall_during_completion_still_completes_the_key(tmp_path: Path) -> None:
    setup = sqlite_setup(tmp_path)
    gate, key = tmp_path / "gate", new_key()
    args = {"label": "stalled", "gate_file": str(gate), "idempotency_key": key}
    answer: list[Any] = []
    lock = WriteLock(sqlite_path(setup.store))
    # A long lease: no renewal falls into the stall, only the completion meets it.
    async with gateway(setup, "--lease-ttl", "60", env={"IDEM_GATEWAY_STORE_TIMEOUT": "1"}) as a:
        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    answer.append(await a.client.call_tool("slow_op", args))

                tg.start_soon(call)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                await lock.acquire()
                try:
                    offset = len(a.log_text())
                    gate.touch()
                    await wait_for(lambda: finished(setup, "stalled"))
                    # The completion ran into the lock and failed once (or answered the caller).
                    await wait_for(lambda: bool(answer) or failed_to_store_since(a, offset))
                finally:
                    await lock.release()
        settled = await wait_record(setup.store, key, completed, timeout=20)
        trail = await events(setup.store, key)
    assert outcome(answer[0]) == "executed"
    assert settled is not None and settled["state"] == "completed", settled
    assert "executed" in [e["outcome"] for e in trail]
    assert "unknown" not in [e["outcome"] for e in trail]
    assert len(setup.executions("slow_op")) == 1


async def test_a_completion_after_a_stall_settles_a_key_another_gateway_marked_unknown(
    tmp_path: Path,
) -> None:
    setup = sqlite_setup(tmp_path)
    gate, key = tmp_path / "gate", new_key()
    args = {"label": "stalled", "gate_file": str(gate), "idempotency_key": key}
    answer: list[Any] = []
    lock = WriteLock(sqlite_path(setup.store))
    async with (
        gateway(setup, "--lease-ttl", "1", name="a", env={"IDEM_GATEWAY_STORE_TIMEOUT": "1"}) as a,
        gateway(setup, "--lease-ttl", "1", name="b") as b,
    ):
        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    answer.append(await a.client.call_tool("slow_op", args))

                tg.start_soon(call)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                await lock.acquire()
                stopped = False
                try:
                    offset = len(a.log_text())
                    gate.touch()
                    await wait_for(lambda: finished(setup, "stalled"))
                    await wait_for(lambda: bool(answer) or failed_to_store_since(a, offset))
                    # A's completion failed once and its lease lapsed during the stall. Keep A from
                    # retrying until B has looked at the key: the stall, for A, goes on.
                    a.stop()
                    stopped = True
                    await lock.release()
                    retry = await b.client.call_tool("slow_op", args)
                    marked = await record(setup.store, key)
                finally:
                    await lock.release()
                    if stopped:
                        a.resume()
        settled = await wait_record(setup.store, key, completed, timeout=20)
        trail = await events(setup.store, key)
        later = await b.client.call_tool("slow_op", args)
    assert error_code(retry) == "outcome_unknown"
    assert marked is not None and marked["state"] == "unknown"
    assert outcome(answer[0]) == "executed"
    assert settled is not None and settled["state"] == "completed", settled
    assert [e["detail"].get("settled_late") for e in trail if e["outcome"] == "executed"] == [True]
    assert outcome(later) == "replayed"
    assert len(setup.executions("slow_op")) == 1


async def test_a_holder_paused_past_its_lease_settles_the_key_when_it_resumes(setup: Setup) -> None:
    setup.manifest()
    gate, key = setup.tmp / "gate", new_key()
    args = {"label": "paused", "gate_file": str(gate), "idempotency_key": key}
    answer: list[Any] = []
    async with (
        gateway(setup, "--lease-ttl", "1", name="a") as a,
        gateway(setup, "--lease-ttl", "1", name="b") as b,
    ):
        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    answer.append(await a.client.call_tool("slow_op", args))

                tg.start_soon(call)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                a.stop()  # its downstream runs in its own session: only the gateway stops
                try:
                    held = await wait_record(
                        setup.store, key, lambda r: r is not None and r["lease_expires_at"] < now_us()
                    )
                    assert held is not None and held["lease_expires_at"] < now_us()
                    retry = await b.client.call_tool("slow_op", args)
                    gate.touch()
                    await wait_for(lambda: finished(setup, "paused"))
                finally:
                    a.resume()
        settled = await wait_record(setup.store, key, completed, timeout=20)
        trail = await events(setup.store, key)
        later = await b.client.call_tool("slow_op", args)
    assert error_code(retry) == "outcome_unknown"
    assert outcome(answer[0]) == "executed"
    assert settled is not None and settled["state"] == "completed", settled
    assert [e["detail"].get("settled_late") for e in trail if e["outcome"] == "executed"] == [True]
    assert outcome(later) == "replayed"
    assert len(setup.executions("slow_op")) == 1
