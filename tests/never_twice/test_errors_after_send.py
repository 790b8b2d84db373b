"""Issue 8, item 3: only what proves the tool did not run may release a key.

A JSON-RPC error that comes after the call was sent (``-32603``: the tool acted, then failed to
answer), or a proxy's 504 after forwarding, leaves the key unknown: retries get
``outcome_unknown`` and the ledger shows one execution, whatever ``store_errors`` says. An error
that by the protocol precedes execution (``-32602`` invalid params; an HTTP 400/404 from a proxy
that did not forward) releases the key: the client gets an ``isError`` result that is not
stored, and a retry with the same key reaches the downstream again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.never_twice.kit import WAIT, fault_proxy, free_port, http_downstream, proxy_log, record
from tests.support import EXAMPLE_SERVER, Setup, error_code, new_key, outcome, read_ledger


async def test_the_hooks_answer_json_rpc_errors_on_the_wire(tmp_path: Path) -> None:
    """The example server's hooks really put JSON-RPC errors on the wire (not isError results)."""
    ledger = tmp_path / "ledger.jsonl"
    params = StdioServerParameters(
        command=sys.executable, args=[str(EXAMPLE_SERVER)], env={**os.environ, "PAYMENTS_LEDGER": str(ledger)}
    )
    with anyio.fail_after(WAIT):
        async with Client(params, cache=None) as client:
            with pytest.raises(MCPError) as internal:
                await client.call_tool("effect_then_error", {"label": "wire"})
            with pytest.raises(MCPError) as invalid:
                await client.call_tool("picky_op", {"label": "wire", "gate_file": str(tmp_path / "no")})
    assert internal.value.code == types.INTERNAL_ERROR
    assert invalid.value.code == types.INVALID_PARAMS
    assert [line["tool"] for line in read_ledger(ledger)] == ["effect_then_error"]  # acted, then erred


@pytest.mark.parametrize("store_errors", [False, True])
async def test_an_internal_error_after_the_effect_leaves_the_key_unknown(
    setup: Setup, store_errors: bool
) -> None:
    setup.manifest(defaults={"store_errors": store_errors})
    key = new_key()
    args = {"label": "charged", "idempotency_key": key}
    async with setup.client() as client:
        answers = [await client.call_tool("effect_then_error", args) for _ in range(3)]
    assert [error_code(a) for a in answers] == ["outcome_unknown"] * 3
    assert len(setup.executions("effect_then_error")) == 1
    held = await record(setup.store, key)
    assert held is not None and held["state"] == "unknown"


@pytest.mark.parametrize("store_errors", [False, True])
async def test_invalid_params_before_execution_releases_the_key(setup: Setup, store_errors: bool) -> None:
    setup.manifest(defaults={"store_errors": store_errors})
    gate = setup.tmp / "accept"
    key = new_key()
    args = {"label": "picky", "gate_file": str(gate), "idempotency_key": key}
    async with setup.client() as client:
        refused = await client.call_tool("picky_op", args)
        left = await record(setup.store, key)
        gate.touch()
        retry = await client.call_tool("picky_op", args)
    assert refused.is_error and error_code(refused) != "outcome_unknown"  # the downstream's refusal
    assert left is None  # not stored: the key is free
    assert outcome(retry) == "executed"  # reached the downstream again, which now accepts
    assert len(setup.executions("picky_op")) == 1


# ---- through an HTTP downstream behind a proxy -------------------------------------------------


@pytest.mark.parametrize("store_errors", [False, True])
async def test_a_proxy_504_after_forwarding_leaves_the_key_unknown(setup: Setup, store_errors: bool) -> None:
    port = free_port()
    async with (
        http_downstream(setup, port),
        fault_proxy(setup, port, tool="create_invoice", answer=504) as url,
    ):
        setup.manifest(http_url=url, defaults={"store_errors": store_errors})
        key = new_key()
        args = {"customer": "acme", "amount": 5, "idempotency_key": key}
        async with setup.client() as client:
            answers = [await client.call_tool("create_invoice", args) for _ in range(3)]
    assert proxy_log(setup) == [{"answer": 504, "forwarded": True}]  # the tool ran once
    assert [error_code(a) for a in answers] == ["outcome_unknown"] * 3
    assert len(setup.executions("create_invoice")) == 1


@pytest.mark.parametrize("status", [400, 404])
async def test_a_proxy_4xx_without_forwarding_releases_the_key(setup: Setup, status: int) -> None:
    port = free_port()
    gate = setup.tmp / "proxy-forwards"
    async with (
        http_downstream(setup, port),
        fault_proxy(setup, port, tool="create_invoice", answer=status, refuse_until=gate) as url,
    ):
        setup.manifest(http_url=url)
        key = new_key()
        args = {"customer": "acme", "amount": 5, "idempotency_key": key}
        async with setup.client() as client:
            refused = await client.call_tool("create_invoice", args)
            left = await record(setup.store, key)
            gate.touch()
            retry = await client.call_tool("create_invoice", args)
    assert refused.is_error and error_code(refused) != "outcome_unknown"
    assert left is None  # not stored: the key is free
    assert proxy_log(setup) == [
        {"answer": status, "forwarded": False},
        {"answer": 200, "forwarded": True},
    ]
    assert outcome(retry) == "executed"
    assert len(setup.executions("create_invoice")) == 1
