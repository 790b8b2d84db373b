"""Multi-round-trip requests (2026-07-28 ``input_required``) through the gateway, and keys.

A keyed call's rounds are one key's: a non-final ``input_required`` result is never stored
(the key is released), the round that ends the call stores its result, and a retry replays it.
When the server is 2025-era and asks mid-call, the gateway holds the call open across rounds
(an exchange): the key is claimed once, and a plain retry re-attaches to the open exchange.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import Setup, new_key, outcome, read_ledger, resource_text
from tests.transparency.kit import Answers, everything_manifest, relay_manifest, text_of, through

pytestmark = pytest.mark.node


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


def sampled(text: str) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=text), model="m"
    )


async def test_a_keyed_call_stores_its_final_round_not_an_input_required_one(setup: Setup) -> None:
    relay_manifest(setup)
    key = new_key()
    arguments = {"text": "pay", "idempotency_key": key}
    async with through(setup, "auto") as client:
        session = client.session
        first = await session.call_tool("keyed_ask", arguments, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        again = await session.call_tool("keyed_ask", arguments, allow_input_required=True)
        assert isinstance(again, types.InputRequiredResult)  # nothing was stored: the round runs anew
        audit = await client.read_resource(f"audit://keys/{key}")
        assert json.loads(resource_text(audit))["record"] is None
        final = await session.call_tool(
            "keyed_ask",
            arguments,
            input_responses={"q": sampled("yes")},
            request_state=first.request_state,
            allow_input_required=True,
        )
        retried = await client.call_tool("keyed_ask", arguments)
    assert isinstance(final, types.CallToolResult)
    assert (text_of(final), outcome(final)) == ("yes", "executed")
    assert (text_of(retried), outcome(retried)) == ("yes", "replayed")
    assert len(read_ledger(setup.tmp / "relay-ledger.jsonl")) == 1


async def test_a_legacy_client_gets_a_keyed_call_resolved_by_the_gateway_once(setup: Setup) -> None:
    relay_manifest(setup)
    key = new_key()
    answers = Answers("legacy")
    async with through(setup, "legacy", **answers.callbacks()) as client:
        first = await client.call_tool("keyed_ask", {"text": "pay", "idempotency_key": key})
        retried = await client.call_tool("keyed_ask", {"text": "pay", "idempotency_key": key})
    assert (text_of(first), outcome(first)) == ("legacy:pay", "executed")
    assert outcome(retried) == "replayed"
    assert len(read_ledger(setup.tmp / "relay-ledger.jsonl")) == 1
    assert [m for m, _ in answers.asked] == ["sampling/createMessage"]


async def test_a_keyed_call_to_a_2025_server_holds_one_claim_across_rounds(setup: Setup) -> None:
    """server-everything asks mid-call; the 2026-07-28 client answers in a second round. A plain
    retry while the first round is open re-attaches to it instead of starting the tool again."""
    everything_manifest(setup, tools={"trigger-sampling-request": {"side_effects": True}})
    key = new_key()
    arguments: dict[str, Any] = {"prompt": "pay", "maxTokens": 5, "idempotency_key": key}
    async with through(setup, "auto", **Answers("unused").callbacks()) as client:  # declares sampling
        session = client.session
        first = await session.call_tool("trigger-sampling-request", arguments, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult), first
        assert (first.request_state or "").startswith("idem-gateway:exchange:")
        questions = [q for q in (first.input_requests or {}).values() if q.method == "sampling/createMessage"]
        assert len(questions) == 1
        reattached = await session.call_tool("trigger-sampling-request", arguments, allow_input_required=True)
        assert isinstance(reattached, types.InputRequiredResult)
        assert reattached.request_state == first.request_state
        answers: types.InputResponses = {k: sampled("once") for k in first.input_requests or {}}
        final = await session.call_tool(
            "trigger-sampling-request",
            arguments,
            input_responses=answers,
            request_state=first.request_state,
            allow_input_required=True,
        )
        retried = await client.call_tool("trigger-sampling-request", arguments)
    assert isinstance(final, types.CallToolResult)
    assert outcome(final) == "executed" and "once" in text_of(final)
    assert outcome(retried) == "replayed" and text_of(retried) == text_of(final)


async def test_a_request_state_the_gateway_never_issued_is_refused(setup: Setup) -> None:
    everything_manifest(setup)
    async with through(setup, "auto") as client:
        with pytest.raises(MCPError) as raised:
            await client.session.call_tool(
                "trigger-sampling-request",
                {"prompt": "x", "maxTokens": 5},
                request_state="idem-gateway:exchange:never-issued",
                input_responses={"q1": sampled("x")},
                allow_input_required=True,
            )
    assert raised.value.code == types.INVALID_PARAMS
