"""Several gateway replicas over HTTP on one PostgreSQL: exactly one execution per key.

Three ``--stateless`` gateway processes share a real PostgreSQL database; clients spread their
calls across them. The example server's ledger counts what really ran.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pg
import pytest
from mcp import Client

from tests.http.kit import WAIT, HttpGateway, http_gateway
from tests.support import Setup, error_code, new_key, outcome, wait_for

pytestmark = pytest.mark.postgres

CONCURRENT = 200


@pytest.fixture
def pg_setup(tmp_path: Path, postgres_url: str) -> Iterator[Setup]:
    with pg.fresh_database(postgres_url) as url:
        made = Setup(tmp_path, url)
        # Long enough that no duplicate gives up while the others are still being sent.
        made.manifest(tools={"slow_op": {"wait": "300s"}})
        yield made


@asynccontextmanager
async def replicas(setup: Setup, n: int, *extra: str) -> AsyncIterator[list[HttpGateway]]:
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(http_gateway(setup, "--stateless", *extra, name=f"replica{i}"))
            for i in range(n)
        ]
        yield started


@asynccontextmanager
async def clients(gateways: list[HttpGateway]) -> AsyncIterator[list[Client]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(g.client("alice")) for g in gateways]


def dump(result: Any) -> dict[str, Any]:
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    data.pop("_meta", None)
    return data


async def test_two_hundred_concurrent_calls_with_one_key_across_three_replicas_execute_once(
    pg_setup: Setup,
) -> None:
    key = new_key()
    gate = pg_setup.tmp / "gate"
    args = {"label": "fan-in", "gate_file": str(gate), "idempotency_key": key}
    results: list[Any] = []
    async with replicas(pg_setup, 3) as gateways, clients(gateways) as connected:

        async def call(client: Client) -> None:
            results.append(await client.call_tool("slow_op", args))

        async def parked() -> int:
            return sum([await g.waiting() for g in gateways])

        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for i in range(CONCURRENT):
                    tg.start_soon(call, connected[i % len(connected)])
                # The race is forced: the first call is inside the downstream and every other one
                # is parked on the shared store's record (the replicas' /metrics say so) before
                # the first is let go.
                await wait_for(lambda: len(pg_setup.executions("slow_op")) == 1, timeout=200)
                while await parked() < CONCURRENT - 1:  # noqa: ASYNC110 - other processes park them
                    await anyio.sleep(0.05)
                gate.touch()
    assert len(pg_setup.executions("slow_op")) == 1
    assert len(results) == CONCURRENT
    assert sorted(outcome(r) or "" for r in results) == ["executed"] + ["replayed"] * (CONCURRENT - 1)
    first = dump(results[0])
    assert all(dump(r) == first for r in results)


async def test_a_replay_is_served_by_a_replica_that_did_not_execute(pg_setup: Setup) -> None:
    key = new_key()
    arguments = {"customer": "acme", "amount": 12.5, "idempotency_key": key}
    async with replicas(pg_setup, 2) as gateways, clients(gateways) as (a, b):
        executed = await a.call_tool("create_invoice", arguments)
        replayed = await b.call_tool("create_invoice", arguments)
    assert outcome(executed) == "executed" and outcome(replayed) == "replayed"
    assert dump(executed) == dump(replayed)
    assert len(pg_setup.executions("create_invoice")) == 1


async def test_a_replica_killed_mid_call_leaves_the_key_unknown_and_the_others_do_not_rerun_it(
    pg_setup: Setup,
) -> None:
    key = new_key()
    gate = pg_setup.tmp / "gate"
    args = {"label": "doomed", "gate_file": str(gate), "idempotency_key": key}
    async with replicas(pg_setup, 2, "--lease-ttl", "3") as (victim, survivor):
        async with survivor.client("alice") as client:
            async with anyio.create_task_group() as tg:

                async def doomed_call() -> None:
                    # Its replica dies under it: the connection breaks mid-call.
                    with pytest.RaisesGroup(httpx2.RemoteProtocolError):
                        async with victim.client("alice") as doomed:
                            await doomed.call_tool("slow_op", args)

                tg.start_soon(doomed_call)
                await wait_for(lambda: len(pg_setup.executions("slow_op")) == 1, timeout=WAIT)
                victim.process.kill()  # SIGKILL: no clean-up, the lease just stops being renewed
                downstream = pg_setup.executions("slow_op")[0]["pid"]
            with anyio.fail_after(WAIT):
                await victim.process.wait()
            _kill_quietly(downstream)
            retry = await client.call_tool("slow_op", args)
            gate.touch()
            again = await client.call_tool("slow_op", args)
    assert error_code(retry) == "outcome_unknown"
    assert error_code(again) == "outcome_unknown"
    assert len(pg_setup.executions("slow_op")) == 1


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
