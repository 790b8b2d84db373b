"""The idempotency engine end to end: a real client, the real gateway, the example server.

Every test counts executions in the example server's ledger: the one number that proves a
retry did or did not cause a second side effect. Each runs on every store backend.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from tests.support import (
    Setup,
    alive,
    call_line,
    error_code,
    forwarded_key,
    initialize_lines,
    meta_of,
    new_key,
    outcome,
    parked,
    request_meta,
    text_of,
    wait_for,
)

INVOICE = {"customer": "acme", "amount": 120.5, "currency": "EUR"}


def closed(error: MCPError) -> bool:
    return error.error.code == CONNECTION_CLOSED


def dump(result: Any) -> dict[str, Any]:
    """What must be identical between a first call and its replay."""
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    data.pop("_meta", None)
    return data


async def test_first_call_executes_once_and_a_retry_replays_it(setup: Setup) -> None:
    setup.manifest(tools={"create_invoice": {"cost": 0.3}})
    key = new_key()
    async with setup.client() as client:
        first = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        second = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert outcome(first) == "executed"
    assert outcome(second) == "replayed"
    assert meta_of(second)["idem-gateway/first-executed-at"].endswith("Z")
    assert dump(first) == dump(second)
    assert first.structured_content["invoice_id"] == second.structured_content["invoice_id"]
    assert len(setup.executions("create_invoice")) == 1


async def test_a_restarted_gateway_replays_what_it_stored(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        first = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    async with setup.client() as client:
        again = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert outcome(again) == "replayed"
    assert dump(first) == dump(again)
    assert len(setup.executions("create_invoice")) == 1


async def test_non_text_content_is_replayed_exactly(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        first = await client.call_tool("image_op", {"idempotency_key": key})
        second = await client.call_tool("image_op", {"idempotency_key": key})
    kinds = [block.type for block in first.content]
    assert kinds == ["image", "resource", "resource"]
    assert dump(first) == dump(second)
    assert outcome(second) == "replayed"
    assert len(setup.executions("image_op")) == 1


async def test_same_key_other_arguments_is_a_conflict_that_reveals_nothing(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        other = await client.call_tool(
            "create_invoice", {"customer": "globex", "amount": 9.99, "idempotency_key": key}
        )
    assert other.is_error
    assert error_code(other) == "idempotency_key_conflict"
    assert meta_of(other)["idem-gateway/error"]["http_status"] == 422
    text = " ".join(getattr(block, "text", "") for block in other.content)
    assert "acme" not in text and "120.5" not in text
    assert other.structured_content is None
    assert len(setup.executions("create_invoice")) == 1


async def test_same_key_other_tool_is_a_conflict(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        other = await client.call_tool(
            "send_email", {"to": "a@example.com", "subject": "s", "body": "b", "idempotency_key": key}
        )
    assert error_code(other) == "idempotency_key_conflict"
    assert setup.executions("send_email") == []


async def test_fingerprint_ignores_key_order_number_form_and_excluded_fields(setup: Setup) -> None:
    setup.manifest(tools={"create_invoice": {"fingerprint_exclude": ["trace_id"]}})
    key = new_key()
    async with setup.client() as client:
        first = await client.call_tool(
            "create_invoice",
            {"customer": "acme", "amount": 10, "currency": "EUR", "trace_id": "t-1", "idempotency_key": key},
        )
        reordered = await client.call_tool(
            "create_invoice",
            {
                "idempotency_key": key,
                "trace_id": "t-2",
                "currency": "EUR",
                "amount": 10.0,
                "customer": "acme",
            },
        )
        null_vs_absent = await client.call_tool(
            "create_invoice",
            {
                "customer": "acme",
                "amount": 10,
                "currency": "EUR",
                "card_number": None,
                "idempotency_key": key,
            },
        )
    assert outcome(first) == "executed"
    assert outcome(reordered) == "replayed"
    assert error_code(null_vs_absent) == "idempotency_key_conflict"
    assert len(setup.executions("create_invoice")) == 1


@pytest.mark.parametrize(
    ("arguments", "meta", "code"),
    [
        ({**INVOICE}, None, "idempotency_key_missing"),
        ({**INVOICE, "idempotency_key": "too-short"}, None, "idempotency_key_invalid"),
        ({**INVOICE, "idempotency_key": "k" * 256}, None, "idempotency_key_invalid"),
        ({**INVOICE, "idempotency_key": "spaces are not allowed!"}, None, "idempotency_key_invalid"),
        ({**INVOICE, "idempotency_key": 12345678901234567890}, None, "idempotency_key_invalid"),
        (
            {**INVOICE, "idempotency_key": "a0000000-0000-4000-8000-000000000001"},
            {"idem-gateway/idempotency-key": "a0000000-0000-4000-8000-000000000002"},
            "idempotency_key_invalid",
        ),
        (
            {"customer": "acme", "amount": "lots", "idempotency_key": "b0000000-0000-4000-8000-000000000001"},
            None,
            "invalid_arguments",
        ),
        ({"amount": 5, "idempotency_key": "c0000000-0000-4000-8000-000000000001"}, None, "invalid_arguments"),
    ],
)
async def test_bad_calls_are_refused_before_any_claim(
    setup: Setup, arguments: dict[str, Any], meta: dict[str, Any] | None, code: str
) -> None:
    setup.manifest()
    async with setup.client() as client:
        refused = await client.call_tool(
            "create_invoice", arguments, meta=request_meta(meta) if meta is not None else None
        )
        assert refused.is_error and error_code(refused) == code
        assert meta_of(refused)["idem-gateway/error"]["http_status"] == 400
        # No record was left: the corrected call with the same key (if it had a valid one) executes.
        key = arguments.get("idempotency_key")
        fixable = isinstance(key, str) and 16 <= len(key) <= 255 and " " not in key
        if fixable:
            fixed = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
            assert outcome(fixed) == "executed"
    assert len(setup.executions("create_invoice")) == (1 if fixable else 0)


async def test_key_in_meta_is_accepted(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        first = await client.call_tool(
            "create_invoice", INVOICE, meta=request_meta({"idem-gateway/idempotency-key": key})
        )
        second = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert outcome(first) == "executed" and outcome(second) == "replayed"
    assert len(setup.executions("create_invoice")) == 1


async def test_read_only_tools_need_no_key_and_write_nothing(setup: Setup) -> None:
    setup.manifest()
    async with setup.client() as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        result = await client.call_tool("list_invoices", {})
    assert not result.is_error
    assert "idempotency_key" not in (listed["list_invoices"].input_schema.get("properties") or {})
    assert "idempotency_key" in listed["create_invoice"].input_schema["required"]
    annotations = listed["create_invoice"].annotations
    assert annotations is not None and annotations.idempotent_hint is True
    assert outcome(result) is None
    assert await setup.record_count() == 0


async def test_thirty_concurrent_calls_with_one_key_execute_once(setup: Setup) -> None:
    setup.manifest(tools={"slow_op": {"wait": "120s"}})
    gate = setup.tmp / "gate"
    log = setup.tmp / "gateway.log"
    args = {"label": "thirty", "gate_file": str(gate), "idempotency_key": new_key()}
    results: list[Any] = []
    async with setup.client(log=log) as client:

        async def call() -> None:
            results.append(await client.call_tool("slow_op", args))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for _ in range(30):
                    tg.start_soon(call)
                # The race is forced: one call is inside the downstream, the 29 others are parked
                # on its key, and only then may the first one finish.
                await wait_for(
                    lambda: len(setup.executions("slow_op")) == 1 and parked(log) == 29, timeout=90
                )
                gate.touch()
    assert len(setup.executions("slow_op")) == 1
    assert len(results) == 30
    assert sorted(outcome(r) or "" for r in results) == ["executed"] + ["replayed"] * 29
    assert all(dump(r) == dump(results[0]) for r in results)
    assert text_of(results[0]) == "finished thirty"


async def test_two_gateway_processes_on_one_store_race_on_one_key(setup: Setup) -> None:
    setup.manifest(tools={"slow_op": {"wait": "120s"}})
    key = new_key()
    gate = setup.tmp / "gate"
    args = {"label": "race", "gate_file": str(gate), "idempotency_key": key}
    logs = (setup.tmp / "a.log", setup.tmp / "b.log")
    results: list[Any] = []
    async with setup.client(log=logs[0]) as a, setup.client(log=logs[1]) as b:

        async def call(client: Any) -> None:
            results.append(await client.call_tool("slow_op", args))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, a)
                tg.start_soon(call, b)
                # One of them is inside the downstream; the other process has parked its call on
                # the store's record. Only then is the first let go.
                await wait_for(
                    lambda: len(setup.executions("slow_op")) == 1 and sum(map(parked, logs)) == 1, timeout=90
                )
                gate.touch()
    assert len(setup.executions("slow_op")) == 1
    assert sorted(outcome(r) or "" for r in results) == ["executed", "replayed"]
    assert dump(results[0]) == dump(results[1])


async def test_in_flight_reject_and_an_exhausted_wait_refuse_with_retry_after(setup: Setup) -> None:
    setup.manifest(tools={"slow_op": {"in_flight": "reject"}, "slow_charge": {"wait": "200ms"}})
    gate = setup.tmp / "gate"
    key, key2 = new_key(), new_key()
    async with setup.client() as client:
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                client.call_tool, "slow_op", {"label": "x", "gate_file": str(gate), "idempotency_key": key}
            )
            tg.start_soon(
                client.call_tool,
                "slow_charge",
                {"amount": 1, "gate_file": str(gate), "idempotency_key": key2},
            )
            await wait_for(
                lambda: len(setup.executions("slow_op")) == 1 and len(setup.executions("slow_charge")) == 1
            )
            rejected = await client.call_tool(
                "slow_op", {"label": "x", "gate_file": str(gate), "idempotency_key": key}
            )
            waited = await client.call_tool(
                "slow_charge", {"amount": 1, "gate_file": str(gate), "idempotency_key": key2}
            )
            span = anyio.current_time() - started
            gate.touch()
    for refused in (rejected, waited):
        assert error_code(refused) == "idempotency_key_in_progress"
        err = meta_of(refused)["idem-gateway/error"]
        # The first call ends at the latest when its downstream timeout (30 s) does; it was
        # claimed and refused within ``span``, so what is left of it, rounded up, is in between
        # (give or take the store clock's re-measured offset, sure to 0.1 s: rounded up, 31).
        assert err["http_status"] == 409
        assert 30 - span <= err["retry_after_seconds"] <= 31, (err["retry_after_seconds"], span)
    assert len(setup.executions("slow_op")) == 1


async def test_downstream_timeout_leaves_the_outcome_unknown(setup: Setup) -> None:
    # A downstream deaf to cancellation runs the call the gateway gave up on, however late it
    # gets to it: the test waits for its start instead of hoping it came before the 300 ms.
    setup.manifest(server={"timeout": "300ms"}, deaf=True)
    gate = setup.tmp / "gate"
    key = new_key()
    args = {"label": "slow", "gate_file": str(gate), "idempotency_key": key}
    async with setup.client() as client:
        first = await client.call_tool("slow_op", args)
        await wait_for(lambda: len(setup.executions("slow_op")) == 1)
        retry = await client.call_tool("slow_op", args)
        gate.touch()  # the abandoned call ends; its result is never stored
        await wait_for(lambda: any(x.get("phase") == "finished" for x in setup.ledger_lines()))
        after = await client.call_tool("slow_op", args)
    assert error_code(first) == "outcome_unknown"
    assert meta_of(first)["idem-gateway/error"]["reason"] == "timeout"
    for refused in (retry, after):
        assert error_code(refused) == "outcome_unknown"
        assert meta_of(refused)["idem-gateway/error"]["http_status"] == 409
        # Refused from the store, not sent again and timed out again.
        assert "reason" not in meta_of(refused)["idem-gateway/error"]
    assert len(setup.executions("slow_op")) == 1


@pytest.mark.parametrize("cancel", ["finish", "forward"])
async def test_a_client_that_gives_up_after_sending(setup: Setup, cancel: str) -> None:
    setup.manifest(defaults={"cancel": cancel})
    gate = setup.tmp / "gate"
    key = new_key()
    args = {"label": "c", "gate_file": str(gate), "idempotency_key": key}
    async with setup.client() as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "slow_op", args)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                # The call was sent (the downstream runs it): the client stops waiting, and its
                # SDK sends notifications/cancelled upstream, before any later request.
                tg.cancel_scope.cancel()
        gate.touch()
        if cancel == "finish":
            # The call ran to its end under the gateway's own scope; the retry gets its result.
            await wait_for(lambda: any(x.get("phase") == "finished" for x in setup.ledger_lines()))
            retry = await client.call_tool("slow_op", args)
            assert outcome(retry) == "replayed"
            assert "finished c" in text_of(retry)
        else:
            retry = await client.call_tool("slow_op", args)
            assert error_code(retry) == "outcome_unknown"
    assert len(setup.executions("slow_op")) == 1


async def test_a_client_whose_connection_drops_mid_call_is_like_finish(setup: Setup) -> None:
    """The client's end of both pipes closes while the call is held downstream (its process died,
    say); only then is the gate opened. The call runs to its end and the next client replays it."""
    setup.manifest()
    gate = setup.tmp / "gate"
    key = new_key()
    args = {"label": "drop", "gate_file": str(gate), "idempotency_key": key}
    params = setup.gateway_params()
    with anyio.fail_after(120), (setup.tmp / "gateway.stderr").open("wb") as errlog:
        process = await anyio.open_process(
            [params.command, *params.args], stdin=PIPE, stdout=PIPE, stderr=errlog, cwd=params.cwd
        )
        try:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send(initialize_lines() + call_line(2, "slow_op", args))
            await wait_for(lambda: len(setup.executions("slow_op")) == 1, timeout=60)
            await process.stdout.aclose()  # the connection is gone mid-call: nobody reads,
            await process.stdin.aclose()  # nobody writes
            gate.touch()
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    async with setup.client() as client:
        retry = await client.call_tool("slow_op", args)
    assert outcome(retry) == "replayed"
    assert "finished drop" in text_of(retry)
    assert len(setup.executions("slow_op")) == 1


async def test_downstream_crash_mid_call_is_unknown(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        crashed = await client.call_tool("crash_op", {"idempotency_key": key})
        retry = await client.call_tool("crash_op", {"idempotency_key": key})
    assert error_code(crashed) == "outcome_unknown"
    assert error_code(retry) == "outcome_unknown"
    assert len(setup.executions("crash_op")) == 1


async def test_downstream_unreachable_before_sending_releases_the_key(setup: Setup) -> None:
    marker = setup.tmp / "downstream-may-start"
    marker.touch()
    setup.manifest(guarded_by=marker)
    key = new_key()
    async with setup.client() as client:
        pid = (await client.call_tool("whoami", {"idempotency_key": new_key()})).structured_content["pid"]
        marker.unlink()
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: not alive(pid))
        # Until the gateway has read the dead pipe's EOF, a call racing that moment is reported
        # as unknown (the conservative answer). A read-only call shows when it has noticed.
        with anyio.fail_after(20):
            while not (await client.call_tool("list_invoices", {})).is_error:  # noqa: ASYNC110 - polls the gateway
                await anyio.sleep(0.01)
        unavailable = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        assert error_code(unavailable) == "downstream_unavailable"
        assert meta_of(unavailable)["idem-gateway/error"]["http_status"] == 502
        marker.touch()
        with anyio.fail_after(30):
            while True:
                retry = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
                if error_code(retry) != "downstream_unavailable":
                    break
                await anyio.sleep(0.1)  # bounded: the downstream restarts with backoff
    assert outcome(retry) == "executed"
    assert len(setup.executions("create_invoice")) == 1


async def test_a_forwarded_key_is_resent_after_an_unknown_outcome(setup: Setup) -> None:
    # Deaf to cancellation: the first send, which timed out, still charges once the gate opens,
    # so the re-send really is deduplicated by the downstream (not merely the only charge).
    setup.manifest(server={"timeout": "2s"}, deaf=True)  # room for the re-send to charge
    gate = setup.tmp / "gate"
    key = new_key()
    args = {"amount": 42.0, "gate_file": str(gate), "idempotency_key": key}
    async with setup.client() as client:
        first = await client.call_tool("slow_charge", args)
        assert error_code(first) == "outcome_unknown"
        await wait_for(lambda: any(x["tool"] == "slow_charge" for x in setup.ledger_lines()))
        gate.touch()
        resent = await client.call_tool("slow_charge", args)
        again = await client.call_tool("slow_charge", args)
    assert outcome(resent) == "executed"
    assert outcome(again) == "replayed"
    sends = [x for x in setup.ledger_lines() if x["tool"] == "slow_charge" and x.get("phase") == "waiting"]
    charged = [x for x in setup.ledger_lines() if x["tool"] == "slow_charge" and x.get("phase") == "charged"]
    assert len(sends) == 2  # the first send and the re-send both reached the tool
    assert len(charged) == 1
    assert resent.structured_content == again.structured_content == charged[0]["result"]
    assert charged[0]["args"]["idempotency_key"] == forwarded_key(key)  # scoped to the principal


async def test_gateway_killed_mid_call_leaves_the_key_unknown_for_the_next_gateway(setup: Setup) -> None:
    setup.manifest()
    gate = setup.tmp / "gate"
    key = new_key()
    args = {"label": "kill", "gate_file": str(gate), "idempotency_key": key}
    downstream_pid = 0
    with anyio.fail_after(60):
        async with setup.client("--lease-ttl", "3") as client:
            gateway_pid = (
                await client.call_tool("whoami", {"idempotency_key": new_key()})
            ).structured_content["ppid"]
            downstream_pid = (
                await client.call_tool("whoami", {"idempotency_key": new_key()})
            ).structured_content["pid"]
            with pytest.RaisesGroup(pytest.RaisesExc(MCPError, check=closed)):  # the call dies with it
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "slow_op", args)
                    await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                    os.kill(gateway_pid, signal.SIGKILL)
    if alive(downstream_pid):
        os.kill(downstream_pid, signal.SIGKILL)
    async with setup.client("--lease-ttl", "3") as client:
        retry = await client.call_tool("slow_op", args)
    assert error_code(retry) == "outcome_unknown"
    assert len(setup.executions("slow_op")) == 1


@pytest.mark.parametrize("store_errors", [True, False])
async def test_tool_errors_are_stored_or_released(setup: Setup, store_errors: bool) -> None:
    setup.manifest(defaults={"store_errors": store_errors})
    key = new_key()
    async with setup.client() as client:
        first = await client.call_tool("fail_op", {"reason": "card declined", "idempotency_key": key})
        second = await client.call_tool("fail_op", {"reason": "card declined", "idempotency_key": key})
    assert first.is_error and error_code(first) is None
    assert outcome(first) == "executed"
    if store_errors:
        assert outcome(second) == "replayed" and second.is_error and dump(first) == dump(second)
        assert len(setup.executions("fail_op")) == 1
    else:
        assert outcome(second) == "executed"
        assert len(setup.executions("fail_op")) == 2


async def test_a_sqlite_store_locked_beyond_its_timeout_fails_closed(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    async with setup.client(env={"IDEM_GATEWAY_STORE_TIMEOUT": "0.3"}) as client:
        await client.list_tools()
        db = sqlite3.connect(setup.store.removeprefix("sqlite:///"), timeout=5)
        try:
            db.execute("BEGIN EXCLUSIVE")
            refused = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": new_key()})
        finally:
            db.rollback()
            db.close()
        later = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": new_key()})
    assert error_code(refused) == "store_unavailable"
    assert meta_of(refused)["idem-gateway/error"]["http_status"] == 503
    assert outcome(later) == "executed"
    assert len(setup.executions("create_invoice")) == 1


async def test_store_unreachable_fails_closed_but_read_only_tools_work(tmp_path: Path) -> None:
    setup = Setup(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:9/none")
    setup.manifest()
    async with setup.client(env={"IDEM_GATEWAY_STORE_TIMEOUT": "1"}) as client:
        refused = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": new_key()})
        read = await client.call_tool("list_invoices", {})
    assert error_code(refused) == "store_unavailable"
    assert not read.is_error
    assert setup.executions("create_invoice") == []


async def test_two_principals_with_one_key_are_independent(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client(principal="alice") as alice, setup.client(principal="bob") as bob:
        a = await alice.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        b = await bob.call_tool("create_invoice", {"customer": "other", "amount": 1, "idempotency_key": key})
        a2 = await alice.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert outcome(a) == "executed" and outcome(b) == "executed" and outcome(a2) == "replayed"
    assert len(setup.executions("create_invoice")) == 2


async def test_key_from_a_message_id_runs_each_message_once(setup: Setup) -> None:
    setup.manifest(tools={"consume_message": {"key_from": "message_id"}})
    async with setup.client() as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert "idempotency_key" not in listed["consume_message"].input_schema.get("properties", {})
        first = await client.call_tool("consume_message", {"message_id": "m-1", "body": "hello"})
        redelivered = await client.call_tool("consume_message", {"message_id": "m-1", "body": "hello"})
        other = await client.call_tool("consume_message", {"message_id": "m-2", "body": "hello"})
    assert outcome(first) == "executed"
    assert outcome(redelivered) == "replayed"
    assert outcome(other) == "executed"
    assert [x["args"]["message_id"] for x in setup.executions("consume_message")] == ["m-1", "m-2"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_both_protocol_eras_get_the_same_semantics(setup: Setup, mode: str) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client(mode=mode) as client:
        first = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        second = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        conflict = await client.call_tool("create_invoice", {**INVOICE, "amount": 1, "idempotency_key": key})
    assert (outcome(first), outcome(second), error_code(conflict)) == (
        "executed",
        "replayed",
        "idempotency_key_conflict",
    )
    assert len(setup.executions("create_invoice")) == 1
