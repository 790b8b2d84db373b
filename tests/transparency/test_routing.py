"""Resources, prompts and completions reach the server that owns them, with results valid for the
client's era; names of several servers do not shadow each other; ``_meta`` passes both ways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import Setup, resource_text
from tests.transparency.kit import MODES, direct, everything_manifest, relay_manifest, text_of, through

pytestmark = pytest.mark.node


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("server", ["everything", "relay"])
async def test_resources_and_prompts_read_as_directly_in_either_era(
    setup: Setup, mode: str, server: str
) -> None:
    """server-everything is 2025-11-25 only, the relay server 2026-07-28 behind the gateway: each
    client era reads the other era's results."""
    if server == "everything":
        params = everything_manifest(setup)
        uri, prompt, arguments = (
            "demo://resource/static/document/features.md",
            "args-prompt",
            {"city": "Lyon"},
        )
    else:
        params = relay_manifest(setup)
        uri, prompt, arguments = "relay://item/7", "greet", {"who": "ana"}
    seen: dict[str, tuple[Any, Any]] = {}
    for label in ("direct", "gateway"):
        async with direct(params, mode) if label == "direct" else through(setup, mode) as client:
            read = await client.read_resource(uri)
            got = await client.get_prompt(prompt, arguments)
        seen[label] = (read.contents, got.messages)
    assert seen["gateway"] == seen["direct"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_resource_a_tool_just_created_is_readable_at_once(setup: Setup, mode: str) -> None:
    everything_manifest(setup)
    data = "data:text/plain;base64,aGVsbG8="
    async with through(setup, mode) as client:
        for n in range(10):
            await client.call_tool("gzip-file-as-resource", {"name": f"f{n}.gz", "data": data})
            read = await client.read_resource(f"demo://resource/session/f{n}.gz")
            assert read.contents and str(read.contents[0].uri) == f"demo://resource/session/f{n}.gz"


async def test_two_servers_with_the_same_prompt_and_uris_are_both_reachable(setup: Setup) -> None:
    relay_manifest(setup, "one", label="first")
    relay_manifest(setup, "two", label="second", resource_prefix="two+")
    async with through(setup, "auto") as client:
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        first = await client.get_prompt("one/greet", {"who": "x"})
        second = await client.get_prompt("two/greet", {"who": "x"})
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        plain = await client.read_resource("relay://static")
        prefixed = await client.read_resource("two+relay://item/3")
    assert {"one/greet", "two/greet"} <= prompts and "greet" not in prompts
    assert first.messages[0].content == types.TextContent(type="text", text="first greets x")
    assert second.messages[0].content == types.TextContent(type="text", text="second greets x")
    assert {"relay://static", "two+relay://static"} <= uris
    assert {"relay://item/{id}", "two+relay://item/{id}"} <= templates
    assert resource_text(plain) == "first:relay://static"
    assert (str(prefixed.contents[0].uri), resource_text(prefixed)) == (
        "two+relay://item/3",
        "second:relay://item/3",
    )


@pytest.mark.parametrize("mode", MODES)
async def test_completions_come_from_the_server_that_owns_the_reference(setup: Setup, mode: str) -> None:
    params = everything_manifest(setup)
    prompt = types.PromptReference(type="ref/prompt", name="completable-prompt")
    seen: dict[str, Any] = {}
    for label in ("direct", "gateway"):
        async with direct(params, mode) if label == "direct" else through(setup, mode) as client:
            done = await client.complete(prompt, {"name": "department", "value": "E"})
        seen[label] = done.completion.values
    assert seen["gateway"] == seen["direct"] and seen["direct"]
    relay_manifest(setup)
    template = types.ResourceTemplateReference(type="ref/resource", uri="relay://item/{id}")
    async with through(setup, mode) as client:
        done = await client.complete(template, {"name": "id", "value": "al"})
    assert done.completion.values == ["alice", "albert"]


@pytest.mark.parametrize("mode", MODES)
async def test_an_unknown_tool_is_a_tool_error_as_from_a_server(setup: Setup, mode: str) -> None:
    relay_manifest(setup)
    async with through(setup, mode) as client:
        result = await client.call_tool("no_such_tool", {})
    assert result.is_error
    assert text_of(result) == "Unknown tool: no_such_tool"


@pytest.mark.parametrize("mode", MODES)
async def test_meta_passes_both_ways_except_what_the_gateway_owns(setup: Setup, mode: str) -> None:
    params = relay_manifest(setup)
    sent: Any = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "vendor/x": 1}
    async with direct(params, mode) as client:
        directly = json.loads(text_of(await client.call_tool("echo_meta", {}, meta=sent)))
    async with through(setup, mode) as client:
        sent["idem-gateway/idempotency-key"] = "not-for-the-server-0001"
        result = await client.call_tool("echo_meta", {}, meta=sent)
    received = json.loads(text_of(result))
    assert set(received) == set(directly) == {"traceparent", "vendor/x"}
    assert received["vendor/x"] == 1
    if directly["traceparent"] == sent["traceparent"]:  # the client's SDK traces nothing of its own
        assert received["traceparent"] == sent["traceparent"]
    meta = dict(result.meta or {})
    assert meta.get("relay/extra") == "kept"
    assert "idem-gateway/outcome" not in meta
    assert meta.get(types.SERVER_INFO_META_KEY, {}).get("name") in (None, "idem-gateway")


@pytest.mark.parametrize("mode", MODES)
async def test_the_servers_instructions_follow_the_gateways(setup: Setup, mode: str) -> None:
    relay_manifest(setup)
    async with through(setup, mode) as client:
        instructions = client.instructions or ""
    assert instructions.startswith("idem-gateway proxies tools")
    assert "## relay\n\nThe relay server asks, logs and reports progress." in instructions


async def test_an_unknown_resource_is_the_servers_own_error(setup: Setup) -> None:
    everything_manifest(setup)
    async with through(setup, "legacy") as client:
        with pytest.raises(MCPError) as raised:
            await client.read_resource("demo://resource/session/never-made")
    assert raised.value.code in (types.INVALID_PARAMS, -32002)
