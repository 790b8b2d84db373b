"""Issue 8, items 8-9: when nothing could be sent, the key is released, never left unknown.

- ``cancel = "forward"`` and a client that cancels while the downstream is still
  reconnecting (its restart hangs until a gate file exists; the gateway waits for it inline,
  ``IDEM_GATEWAY_CONNECT_WAIT``): nothing was sent, so the key is released; a retry once the
  downstream is up executes once.
- A stdio downstream killed between calls (dead before the call; the gateway has, or has not
  yet, seen the end of its stdout): the next keyed call is ``executed`` (after a reconnect) or
  ``downstream_unavailable`` with the key released, never ``outcome_unknown``.
- An HTTP downstream that died (connection refused): ``downstream_unavailable``, key released;
  once it is back on its port, a retry executes once.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio

from tests.never_twice.kit import (
    WAIT,
    children,
    free_port,
    gateway,
    http_downstream,
    launcher_manifest,
    record,
    starts,
    wait_record,
)
from tests.support import Setup, alive, error_code, new_key, outcome, wait_for

CONNECT_WAIT = {"IDEM_GATEWAY_CONNECT_WAIT": "30"}
KILLS = 6


async def _until_executed(client: Any, tool: str, args: dict[str, Any]) -> Any:
    """Retry while the downstream is unavailable (bounded: it restarts with backoff)."""
    with anyio.fail_after(WAIT):
        while True:
            answer = await client.call_tool(tool, args)
            if error_code(answer) != "downstream_unavailable":
                return answer
            await anyio.sleep(0.1)


async def test_a_forwarded_cancellation_before_anything_was_sent_releases_the_key(setup: Setup) -> None:
    marker, block, gate = setup.tmp / "launched", setup.tmp / "hang-on-start", setup.tmp / "gate"
    launcher_manifest(setup, marker=marker, block=block, gate=gate, defaults={"cancel": "forward"})
    key = new_key()
    args = {"customer": "cancelled", "amount": 5, "idempotency_key": key}
    async with gateway(setup, env=CONNECT_WAIT) as gw:
        (child,) = children(gw.pid)
        block.touch()  # from now on a (re)start of the downstream hangs until the gate opens
        os.kill(child, signal.SIGKILL)
        await wait_for(lambda: starts(marker) == 2)  # the gateway is reconnecting; it cannot finish
        scope = anyio.CancelScope()
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    with scope:
                        await gw.client.call_tool("create_invoice", args)

                tg.start_soon(call)
                claimed = await wait_record(setup.store, key, lambda r: r is not None)
                scope.cancel()  # the client gives up: notifications/cancelled
        left = await wait_record(setup.store, key, lambda r: r is None or r["state"] != "in_progress")
        gate.touch()
        retry = await _until_executed(gw.client, "create_invoice", args)
    assert claimed is not None, "the call never claimed its key"
    assert left is None, f"the cancelled call left the key {left['state']}"
    assert outcome(retry) == "executed"
    assert len(setup.executions("create_invoice")) == 1


async def test_a_stdio_downstream_killed_between_calls_is_never_an_unknown_outcome(setup: Setup) -> None:
    marker, release = setup.tmp / "launched", setup.tmp / "release-stdout"
    launcher_manifest(
        setup, marker=marker, block=setup.tmp / "never", gate=setup.tmp / "never", hold_stdout=release
    )
    answers: list[tuple[str, str | None]] = []
    left_behind: list[dict[str, Any]] = []
    async with gateway(setup) as gw:
        for i in range(KILLS):
            await _until_executed(gw.client, "list_invoices", {})  # the downstream is up
            (child,) = children(gw.pid)
            noticed = gw.log_text().count("connection lost")
            os.kill(child, signal.SIGKILL)
            await wait_for(lambda pid=child: not alive(pid))  # dead: its stdin is closed
            if i % 2:
                # The gateway has read the end of the dead server's stdout before the call.
                await anyio.Path(f"{release}-{child}").touch()
                await wait_for(lambda seen=noticed: gw.log_text().count("connection lost") > seen)
            # else: a helper still holds the dead server's stdout open: the gateway has not noticed.
            key = new_key()
            args = {"customer": f"after-kill-{i}", "amount": 5, "idempotency_key": key}
            first = await gw.client.call_tool("create_invoice", args)
            answers.append((outcome(first) or "", error_code(first)))
            await anyio.Path(f"{release}-{child}").touch()
            if error_code(first) == "downstream_unavailable":
                left = await record(setup.store, key)
                if left is not None:
                    left_behind.append(left)
                await _until_executed(gw.client, "create_invoice", args)
    assert [code for _, code in answers if code not in (None, "downstream_unavailable")] == [], answers
    assert left_behind == [], "downstream_unavailable left a record"
    by_customer: dict[str, int] = {}
    for line in setup.executions("create_invoice"):
        by_customer[line["args"]["customer"]] = by_customer.get(line["args"]["customer"], 0) + 1
    assert by_customer == {f"after-kill-{i}": 1 for i in range(KILLS)}


async def test_an_http_downstream_that_died_is_unavailable_and_the_key_is_released(setup: Setup) -> None:
    port = free_port()
    key = new_key()
    args = {"customer": "http-gone", "amount": 5, "idempotency_key": key}
    async with http_downstream(setup, port) as server:
        setup.manifest(http_url=f"http://127.0.0.1:{port}/mcp")
        async with gateway(setup) as gw:
            assert not (await gw.client.call_tool("list_invoices", {})).is_error
            server.kill()
            await server.wait()
            refused = await gw.client.call_tool("create_invoice", args)
            left = await record(setup.store, key)
            async with http_downstream(setup, port, name="downstream-again"):
                retry = await _until_executed(gw.client, "create_invoice", args)
    assert error_code(refused) == "downstream_unavailable"
    assert left is None, f"downstream_unavailable left a record: {left}"
    assert outcome(retry) == "executed"
    assert len(setup.executions("create_invoice")) == 1
