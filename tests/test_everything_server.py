"""The conformance fixture (``examples/everything_server.py``) directly, with the Python SDK client.

Over stdio, once per protocol era: the 2025 handshake (server→client requests, logging/setLevel,
resources/subscribe) and 2026-07-28 (``input_required`` rounds, per-request log opt-in,
``subscriptions/listen``). The suite itself runs against it in ``tests/conformance``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged
from pydantic import FileUrl

FIXTURE = Path(__file__).resolve().parent.parent / "examples" / "everything_server.py"
WATCHED = "test://watched-resource"
ERAS = ["legacy", "2026-07-28"]
WAIT = 20.0


class Peer:
    """The client side's scripted answers, and everything the server sent that was not a response."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.logs: list[str] = []
        self.notifications: list[Any] = []
        self.arrived = anyio.Event()

    async def sampling(self, context: Any, params: Any) -> types.CreateMessageResult:
        self.asked.append("sampling")
        content = types.TextContent(type="text", text="a scripted completion")
        return types.CreateMessageResult(role="assistant", content=content, model="script")

    async def elicitation(self, context: Any, params: Any) -> types.ElicitResult:
        self.asked.append(f"elicitation/{params.mode}")
        if params.mode == "url":
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "ada@example.com"})

    async def roots(self, context: Any) -> types.ListRootsResult:
        self.asked.append("roots")
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///srv/project"), name="project")])

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(str(params.data))

    async def message(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification | types.ToolListChangedNotification):
            self.notifications.append(message)
            self.arrived.set()


@asynccontextmanager
async def fixture(mode: str, peer: Peer) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=[str(FIXTURE)])
    async with Client(
        params,
        mode=mode,
        cache=None,
        sampling_callback=peer.sampling,
        elicitation_callback=peer.elicitation,
        list_roots_callback=peer.roots,
        logging_callback=peer.logging,
        message_handler=peer.message,
        log_level="debug",
    ) as client:
        yield client


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.mark.parametrize("mode", ERAS)
async def test_the_fixture_asks_the_client_and_reports_back_in_both_eras(mode: str) -> None:
    peer = Peer()
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    with anyio.fail_after(WAIT):
        async with fixture(mode, peer) as client:
            sampled = await client.call_tool("test_sampling", {"prompt": "say something"})
            elicited = await client.call_tool("test_elicitation", {"message": "who are you?"})
            url = await client.call_tool("test_elicitation_url", {"url": "https://example.com/consent"})
            roots = await client.call_tool("test_list_roots", {})
            logged = await client.call_tool("test_tool_with_logging", {})
            progressed = await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)

    assert text_of(sampled) == "LLM response: a scripted completion"
    assert '"username": "ada"' in text_of(elicited)
    assert text_of(url) == "URL elicitation: action=decline"
    assert roots.structured_content is not None
    assert roots.structured_content["roots"] == [{"uri": "file:///srv/project", "name": "project"}]
    assert peer.asked == ["sampling", "elicitation/form", "elicitation/url", "roots"]
    assert not logged.is_error and peer.logs == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]
    assert not progressed.is_error and reported == [0, 50, 100]


async def test_a_2025_client_hears_only_the_log_levels_it_set() -> None:
    peer = Peer()
    with anyio.fail_after(WAIT):
        async with fixture("legacy", peer) as client:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # logging/setLevel is deprecated in 2026-07-28 only
                await client.session.set_logging_level("warning")
            await client.call_tool("test_tool_with_logging", {})
    assert peer.logs == []


async def test_a_resource_update_reaches_a_2025_subscriber() -> None:
    peer = Peer()
    with anyio.fail_after(WAIT):
        async with fixture("legacy", peer) as client:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await client.subscribe_resource(WATCHED)
            updated = await client.call_tool("test_update_resource", {})
            await peer.arrived.wait()
            read = await client.read_resource(WATCHED)

    assert [n.params.uri for n in peer.notifications if isinstance(n, types.ResourceUpdatedNotification)] == [
        WATCHED
    ]
    assert updated.structured_content == {"uri": WATCHED, "version": 1}
    contents = read.contents[0]
    assert isinstance(contents, types.TextResourceContents) and contents.text.endswith("version 1")


async def test_a_2026_listener_hears_a_resource_update_and_a_tool_list_change() -> None:
    peer = Peer()
    with anyio.fail_after(WAIT):
        async with (
            fixture("2026-07-28", peer) as client,
            client.listen(tools_list_changed=True, resource_subscriptions=[WATCHED]) as events,
        ):
            await client.call_tool("test_update_resource", {})
            first = await events.__anext__()
            await client.call_tool("test_trigger_tool_change", {})
            second = await events.__anext__()
            names = {t.name for t in (await client.list_tools()).tools}
            ran = await client.call_tool("test_dynamic_tool", {})

    assert first == ResourceUpdated(uri=WATCHED)
    assert second == ToolsListChanged()
    assert "test_dynamic_tool" in names and text_of(ran) == "the dynamic tool ran"


async def test_a_2025_client_is_told_the_tool_list_changed() -> None:
    peer = Peer()
    with anyio.fail_after(WAIT):
        async with fixture("legacy", peer) as client:
            before = {t.name for t in (await client.list_tools()).tools}
            await client.call_tool("test_trigger_tool_change", {})
            await peer.arrived.wait()
            after = {t.name for t in (await client.list_tools()).tools}

    assert [type(n) for n in peer.notifications] == [types.ToolListChangedNotification]
    assert after - before == {"test_dynamic_tool"}
