"""Manifest policies end to end over MCP: ``expired = "reject"``, ``forward_key`` by ``_meta`` and by
argument, read-only tools forwarding a client's cancellation, and the sweeper ``serve`` runs.

Retention is made to end by moving the record's ``expires_at`` into the past in the store itself,
which is what the passing of time does to it (nothing waits for a retention to run out).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from tests.never_twice.kit import now_us, sql, wait_record
from tests.support import (
    NO_REPLAY_CACHE,
    Setup,
    error_code,
    forwarded_key,
    meta_of,
    new_key,
    outcome,
    wait_for,
)
from tests.transparency.kit import RELAY_SERVER, manifest

INVOICE = {"customer": "acme", "amount": 120.5}


async def retention_ends(store: str, key: str) -> None:
    await sql(
        store,
        "UPDATE idempotency_records SET expires_at = :past WHERE key = :k",
        {"past": now_us() - 1_000_000, "k": key},
    )


@pytest.mark.parametrize("expired", ["reject", "execute"])
async def test_a_retry_after_retention_is_refused_with_reject_and_runs_anew_with_execute(
    setup: Setup, expired: str
) -> None:
    setup.manifest(tools={"create_invoice": {"expired": expired}})
    key = new_key()
    arguments = {**INVOICE, "idempotency_key": key}
    async with setup.client(*NO_REPLAY_CACHE) as client:
        first = await client.call_tool("create_invoice", arguments)
        await retention_ends(setup.store, key)
        retry = await client.call_tool("create_invoice", arguments)
        again = await client.call_tool("create_invoice", arguments)
    assert outcome(first) == "executed"
    if expired == "reject":
        for refused in (retry, again):
            assert refused.is_error and error_code(refused) == "idempotency_key_expired"
            assert meta_of(refused)["idem-gateway/error"]["http_status"] == 410
        assert len(setup.executions("create_invoice")) == 1
    else:
        assert (outcome(retry), outcome(again)) == ("executed", "replayed")
        assert len(setup.executions("create_invoice")) == 2


async def test_the_sweeper_in_serve_drops_expired_results_and_keeps_reject_tombstones(setup: Setup) -> None:
    setup.manifest(tools={"create_invoice": {"expired": "reject"}})
    kept, dropped = new_key(), new_key()
    async with setup.client("--sweep-interval", "0.1", *NO_REPLAY_CACHE) as client:
        assert outcome(await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": kept})) == (
            "executed"
        )
        email = {"to": "a@b.c", "subject": "s", "body": "b", "idempotency_key": dropped}
        assert outcome(await client.call_tool("send_email", email)) == "executed"
        await retention_ends(setup.store, kept)
        await retention_ends(setup.store, dropped)
        # No purge command: the gateway's own sweeper does it, within a few of its intervals.
        gone = await wait_record(setup.store, dropped, lambda r: r is None)
        tomb = await wait_record(setup.store, kept, lambda r: r is not None and r["state"] == "expired")
        refused = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": kept})
        anew = await client.call_tool("send_email", email)
    assert gone is None
    assert tomb is not None and tomb["state"] == "expired" and tomb["result"] is None
    assert error_code(refused) == "idempotency_key_expired"
    assert outcome(anew) == "executed"
    assert len(setup.executions("create_invoice")) == 1
    assert len(setup.executions("send_email")) == 2


async def test_forward_key_meta_sends_the_principal_scoped_key_in_meta(setup: Setup) -> None:
    setup.manifest(
        tools={"echo_meta": {"side_effects": True, "forward_key": "meta:acme.com/idempotency-key"}}
    )
    key = new_key()
    async with setup.client(principal="alice") as client:
        first = await client.call_tool("echo_meta", {"idempotency_key": key})
        again = await client.call_tool("echo_meta", {"idempotency_key": key})
    assert (outcome(first), outcome(again)) == ("executed", "replayed")
    seen = first.structured_content or {}
    seen = seen.get("result", seen)
    assert seen["acme.com/idempotency-key"] == forwarded_key(key, "alice")
    assert key not in str(seen)  # the client's own key never goes downstream
    assert again.structured_content == first.structured_content


async def test_forward_key_argument_sends_the_principal_scoped_key_as_that_argument(setup: Setup) -> None:
    setup.manifest(tools={"create_invoice": {"forward_key": "argument:trace_id"}})
    key = new_key()
    async with setup.client(principal="bob") as client:
        first = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        again = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert (outcome(first), outcome(again)) == ("executed", "replayed")
    (ran,) = setup.executions("create_invoice")
    assert ran["args"]["trace_id"] == forwarded_key(key, "bob")
    assert "idempotency_key" not in ran["args"]


async def test_a_read_only_tool_forwards_the_clients_cancellation_downstream(
    setup: Setup, tmp_path: Path
) -> None:
    """Whatever ``cancel`` says: it applies to side-effecting tools only."""
    server = {"command": sys.executable, "args": [str(RELAY_SERVER)]}
    manifest(setup.manifests, "relay", server, tools={"block": {"cancel": "finish"}})
    note, gate = tmp_path / "note", tmp_path / "gate"

    def notes() -> list[str]:
        return note.read_text().split() if note.exists() else []

    async with setup.client() as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "block", {"gate": str(gate), "note": str(note)})
                await wait_for(lambda: notes() == ["started"])
                tg.cancel_scope.cancel()  # the client gives up on the call
            await wait_for(lambda: notes() == ["started", "cancelled"])
        still = await client.call_tool("echo_meta", {})
    assert not still.is_error  # the session to the downstream outlives the cancelled call
    assert await setup.record_count() == 0
