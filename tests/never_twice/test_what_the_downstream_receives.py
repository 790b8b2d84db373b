"""Issue 8, items 10-12: a key and a payload are what the downstream would receive, exactly.

- Two integers past 2^53 that the downstream receives differently never share a fingerprint
  (while 1 and 1.0 still do).
- A key is matched as a whole string: ``K + "\\n"`` is not a spelling of ``K``.
- ``NaN``, ``Infinity``, ``-Infinity`` and ``1e400`` (which overflows to infinity) are not JSON
  numbers a tool can receive: ``invalid_arguments``, audited as ``invalid``, nothing runs, and
  the gateway keeps serving. The Python client cannot send them, so these calls are raw
  JSON-RPC lines on the gateway's stdin.
"""

from __future__ import annotations

import json

import pytest

from tests.never_twice.kit import events, raw_gateway
from tests.support import Setup, error_code, new_key, outcome, request_meta


async def test_integers_past_two_to_the_53_are_two_payloads(setup: Setup) -> None:
    setup.manifest()
    key, other = new_key(), new_key()
    async with setup.client() as client:
        first = await client.call_tool(
            "create_invoice", {"customer": "acme", "amount": 9007199254740993, "idempotency_key": key}
        )
        second = await client.call_tool(
            "create_invoice", {"customer": "acme", "amount": 9007199254740992, "idempotency_key": key}
        )
        one = await client.call_tool(
            "create_invoice", {"customer": "acme", "amount": 1, "idempotency_key": other}
        )
        one_point_zero = await client.call_tool(
            "create_invoice", {"customer": "acme", "amount": 1.0, "idempotency_key": other}
        )
    assert outcome(first) == "executed"
    assert error_code(second) == "idempotency_key_conflict"
    assert (outcome(one), outcome(one_point_zero)) == ("executed", "replayed")
    assert len(setup.executions("create_invoice")) == 2


async def test_a_key_with_a_trailing_newline_is_invalid(setup: Setup) -> None:
    setup.manifest()
    key = new_key()
    async with setup.client() as client:
        refused = await client.call_tool(
            "create_invoice", {"customer": "acme", "amount": 5, "idempotency_key": key + "\n"}
        )
        meta_refused = await client.call_tool(
            "create_invoice",
            {"customer": "acme", "amount": 5},
            meta=request_meta({"idem-gateway/idempotency-key": key + "\n"}),
        )
    assert error_code(refused) == "idempotency_key_invalid"
    assert error_code(meta_refused) == "idempotency_key_invalid"
    assert setup.executions("create_invoice") == []


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400"]


@pytest.mark.parametrize("number", NON_FINITE)
async def test_a_non_finite_number_is_invalid_arguments(setup: Setup, number: str) -> None:
    setup.manifest()
    key = new_key()
    async with raw_gateway(setup) as raw:
        refused = await raw.call_tool_raw(
            "create_invoice", f'{{"customer":"acme","amount":{number},"idempotency_key":"{key}"}}'
        )
        # Still serving: a sound call right after executes.
        sound = await raw.call_tool_raw(
            "create_invoice", json.dumps({"customer": "acme", "amount": 5, "idempotency_key": new_key()})
        )
    assert "result" in refused, refused  # a tool result, not a JSON-RPC error
    result = refused["result"]
    assert result.get("isError") is True
    assert (result.get("_meta") or {}).get("idem-gateway/error", {}).get("code") == "invalid_arguments"
    assert [e["outcome"] for e in await events(setup.store, key)] == ["invalid"]
    assert sound["result"]["_meta"]["idem-gateway/outcome"] == "executed"
    assert len(setup.executions("create_invoice")) == 1  # only the sound call ran


@pytest.mark.parametrize("number", NON_FINITE)
async def test_a_non_finite_number_to_a_read_only_tool_is_invalid_arguments(
    setup: Setup, number: str
) -> None:
    setup.manifest()
    async with raw_gateway(setup) as raw:
        refused = await raw.call_tool_raw("quote_fee", f'{{"amount":{number}}}')
        sound = await raw.call_tool_raw("quote_fee", '{"amount":100}')
    assert "result" in refused, refused
    result = refused["result"]
    assert result.get("isError") is True
    assert (result.get("_meta") or {}).get("idem-gateway/error", {}).get("code") == "invalid_arguments"
    assert sound["result"]["structuredContent"] == {"amount": 100.0, "fee": 3.2}
