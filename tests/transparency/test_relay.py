"""What a server asks its client mid-call (sampling, elicitation, roots) reaches that client
through the gateway, in both eras, and reaches no other client.

server-everything speaks 2025-11-25 (requests mid-call); the relay server behind the gateway
speaks 2026-07-28 (``input_required`` rounds). The clients speak 2026-07-28 (``auto``) and
2025-11-25 (``legacy``), so every bridge is crossed: request → request, request →
``input_required``, ``input_required`` → request, ``input_required`` → ``input_required``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.http.kit import http_gateway
from tests.support import Setup
from tests.transparency.kit import (
    MODES,
    WAIT,
    Answers,
    direct,
    everything_manifest,
    over_http,
    relay_manifest,
    text_of,
    through,
)

pytestmark = pytest.mark.node


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


@pytest.mark.parametrize("mode", MODES)
async def test_a_server_offers_through_the_gateway_every_tool_it_offers_directly(
    setup: Setup, mode: str
) -> None:
    params = everything_manifest(setup)
    answers = Answers("client")
    async with direct(params, mode, **answers.callbacks()) as client:
        directly = {t.name for t in (await client.list_tools()).tools}
    async with through(setup, mode, **answers.callbacks()) as client:
        gatewayed = {t.name for t in (await client.list_tools()).tools}
    assert {"trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"} <= directly
    assert gatewayed == directly


@pytest.mark.parametrize("mode", MODES)
async def test_sampling_elicitation_and_roots_from_a_2025_server_reach_the_client(
    setup: Setup, mode: str
) -> None:
    everything_manifest(setup)
    answers = Answers("alice")
    async with through(setup, mode, **answers.callbacks()) as client:
        sampled = await client.call_tool("trigger-sampling-request", {"prompt": "one word", "maxTokens": 5})
        elicited = await client.call_tool("trigger-elicitation-request", {})
        url = await client.call_tool("trigger-url-elicitation", {"url": "https://example.com/consent"})
        roots = await client.call_tool("get-roots-list", {})
    assert "alice:" in text_of(sampled) and "one word" in text_of(sampled)
    assert "alice" in text_of(elicited) and not elicited.is_error
    assert not url.is_error
    assert "file:///alice" in text_of(roots)
    methods = [method for method, _ in answers.asked]
    assert methods.count("sampling/createMessage") == 1
    assert [p.get("mode") for m, p in answers.asked if m == "elicitation/create"].count("url") == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["sampling/createMessage", "elicitation/create", "roots/list"])
async def test_what_a_2026_server_asks_reaches_the_client_as_directly(
    setup: Setup, mode: str, method: str
) -> None:
    params = relay_manifest(setup)
    answers = Answers("bob")
    async with direct(params, mode, **answers.callbacks()) as client:
        directly = await client.call_tool("ask", {"method": method, "text": "hi"})
    async with through(setup, mode, **answers.callbacks()) as client:
        gatewayed = await client.call_tool("ask", {"method": method, "text": "hi"})
    assert not gatewayed.is_error
    assert text_of(gatewayed) == text_of(directly)
    assert [m for m, _ in answers.asked] == [method, method]


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_the_capability_is_answered_for_as_it_would_answer(
    setup: Setup, mode: str
) -> None:
    """server-everything lists the sampling tool through the gateway (the gateway can sample),
    but this client cannot: the server hears "method not found", as from such a client."""
    everything_manifest(setup)
    answers = Answers("nosampling")
    async with through(setup, mode, **answers.callbacks(sampling=False)) as client:
        result = await client.call_tool("trigger-sampling-request", {"prompt": "x", "maxTokens": 5})
    assert result.is_error
    assert "Method not found" in text_of(result)
    assert answers.asked == []


@pytest.mark.parametrize("mode", MODES)
async def test_what_a_server_asks_reaches_only_the_principal_whose_call_asked(
    setup: Setup, mode: str
) -> None:
    """Alice and Bob call the sampling tool at once over HTTP; each is asked only its own prompt.

    Alice's answer is held until Bob's question has arrived too, so both calls are in flight
    downstream at the same time when the questions are routed.
    """
    everything_manifest(setup)
    alice, bob = Answers("alice", release=anyio.Event()), Answers("bob")
    results: dict[str, str] = {}
    async with http_gateway(setup) as gateway:

        async def call(principal: str, answers: Answers) -> None:
            async with over_http(gateway, principal, mode, **answers.callbacks()) as client:
                result = await client.call_tool(
                    "trigger-sampling-request", {"prompt": principal, "maxTokens": 5}
                )
                results[principal] = text_of(result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "alice", alice)
            with anyio.fail_after(WAIT):
                await alice.arrived.wait()
            tg.start_soon(call, "bob", bob)
            with anyio.fail_after(WAIT):
                await bob.arrived.wait()
            assert alice.release is not None
            alice.release.set()
    assert [prompt(p) for m, p in alice.asked if m == "sampling/createMessage"] == ["alice"]
    assert [prompt(p) for m, p in bob.asked if m == "sampling/createMessage"] == ["bob"]
    assert '"alice:' in results["alice"] and '"bob:' in results["bob"]


def prompt(params: dict[str, Any]) -> str:
    """The tool's prompt argument, from the sampling request server-everything builds with it."""
    text = params["messages"][0]["content"]["text"]
    return str(text).rsplit(": ", 1)[-1]
