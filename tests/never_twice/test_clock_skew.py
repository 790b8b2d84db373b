"""Issue 8, item 7: a replica whose clock runs ahead never treats a live call as dead.

Two gateway processes on one PostgreSQL store; replica B runs under ``faketime -f +12s`` (its
wall clock 12 s ahead, its monotonic clock true). While A runs a call under a live 10 s lease,
B's retry must wait for A's result and replay it, never answer ``outcome_unknown`` at once; and
for a natively idempotent tool, B must not re-send while A's call still runs.

That B did *not* answer, or did not re-send, is observed over a bounded window (B would have
done it at once); everything else is gated on the ledger and on answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pg
import pytest

from tests.never_twice.kit import WAIT, Running, gateway
from tests.support import Setup, error_code, new_key, outcome, system_tool, wait_for

pytestmark = pytest.mark.postgres

SKEW = "+12s"
QUIET_WINDOW = 3.0  # B answers or re-sends at once when it misreads the lease; it has this long


@pytest.fixture
def pg_setup(tmp_path: Path, postgres_url: str) -> Iterator[Setup]:
    with pg.fresh_database(postgres_url) as url:
        made = Setup(tmp_path, url)
        made.manifest()
        yield made


@asynccontextmanager
async def two_replicas(setup: Setup) -> AsyncIterator[tuple[Running, Running]]:
    faketime = system_tool("faketime")
    async with (
        gateway(setup, name="a") as a,
        gateway(setup, name="b", wrap=[faketime, "-f", SKEW], env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"}) as b,
    ):
        yield a, b


def lines(setup: Setup, tool: str, phase: str) -> list[dict[str, Any]]:
    return [x for x in setup.ledger_lines() if x["tool"] == tool and x.get("phase") == phase]


async def test_a_replica_ahead_in_time_waits_for_a_live_call_and_replays(pg_setup: Setup) -> None:
    setup = pg_setup
    gate, key = setup.tmp / "gate", new_key()
    args = {"label": "skew", "gate_file": str(gate), "idempotency_key": key}
    first: list[Any] = []
    retry: list[Any] = []
    async with two_replicas(setup) as (a, b):
        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:

                async def call_a() -> None:
                    first.append(await a.client.call_tool("slow_op", args))

                async def call_b() -> None:
                    retry.append(await b.client.call_tool("slow_op", args))

                tg.start_soon(call_a)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                tg.start_soon(call_b)
                with anyio.move_on_after(QUIET_WINDOW):
                    await wait_for(lambda: bool(retry))
                answered_at_once = list(retry)
                gate.touch()
    assert answered_at_once == [], f"B answered while A's lease was alive: {error_code(answered_at_once[0])}"
    assert outcome(first[0]) == "executed"
    assert outcome(retry[0]) == "replayed"
    assert len(setup.executions("slow_op")) == 1


async def test_a_replica_ahead_in_time_does_not_resend_a_forwarded_key_while_the_call_runs(
    pg_setup: Setup,
) -> None:
    setup = pg_setup
    gate, key = setup.tmp / "gate", new_key()
    args = {"amount": 12.0, "gate_file": str(gate), "idempotency_key": key}
    first: list[Any] = []
    retry: list[Any] = []
    async with two_replicas(setup) as (a, b):
        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:

                async def call_a() -> None:
                    first.append(await a.client.call_tool("slow_charge", args))

                async def call_b() -> None:
                    retry.append(await b.client.call_tool("slow_charge", args))

                tg.start_soon(call_a)
                await wait_for(lambda: len(lines(setup, "slow_charge", "waiting")) == 1)
                tg.start_soon(call_b)
                with anyio.move_on_after(QUIET_WINDOW):
                    await wait_for(lambda: bool(retry) or len(lines(setup, "slow_charge", "waiting")) > 1)
                sent_while_running = len(lines(setup, "slow_charge", "waiting"))
                gate.touch()
    assert sent_while_running == 1, "B re-sent the call while A's call was still running"
    assert outcome(first[0]) == "executed"
    assert outcome(retry[0]) == "replayed"
    assert len(lines(setup, "slow_charge", "charged")) == 1
