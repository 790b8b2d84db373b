"""Every private API of a dependency the gateway relies on (``gateway/_sdk.py``) still works.

Each seam is exercised for real against the installed ``mcp``, asyncio and uvicorn, and a
failure names the seam: an upgrade that moves one fails here, by name, instead of somewhere
deep in a relay or a transport.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.server import Server
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.message import SessionMessage

from gateway import _sdk
from tests.http.kit import INITIALIZE

SEAMS = {
    "request_channel",
    "connection",
    "serve_era",
    "otel_middleware",
    "http_sessions",
    "http_session_owners",
    "requests_in_flight",
    "stamp",
    "dispatcher",
    "absorb_tool_listing",
    "write_pipe_protocol",
    "uvicorn_server",
}
WAIT = 10.0


@contextmanager
def seam(name: str) -> Iterator[None]:
    """Any failure inside is reported as the named seam's."""
    assert name in SEAMS
    try:
        yield
    except Exception as exc:
        pytest.fail(f"gateway._sdk.{name}: the installed dependency changed under it: {exc!r}")


def test_every_seam_is_one_documented_function_of_the_door_module() -> None:
    found = {
        name
        for name, value in vars(_sdk).items()
        if inspect.isfunction(value) and value.__module__ == _sdk.__name__
    }
    assert found == SEAMS
    for name in found:
        assert "Why private" in (getattr(_sdk, name).__doc__ or ""), name


def _server(seen: list[ServerRequestContext[Any, Any]]) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        tool = types.Tool(name="echo", input_schema={"type": "object"})
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        seen.append(ctx)
        return types.CallToolResult(content=[types.TextContent(type="text", text=ctx.protocol_version)])

    return Server("seams", on_list_tools=list_tools, on_call_tool=call_tool)


@asynccontextmanager
async def _served_by_era(server: Server[Any]) -> AsyncIterator[tuple[Any, Any]]:
    """A client transport whose far end is ``_sdk.serve_era``, fed the way gateway/server/stdio.py does."""
    to_server, server_reads = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    server_writes, to_client = anyio.create_memory_object_stream[SessionMessage](16)
    opened = anyio.Event()

    class Lookahead:
        """The server's read stream, first read up to the opening request and put back."""

        def __init__(self) -> None:
            self.ahead: list[Any] = []

        async def opening(self) -> types.JSONRPCRequest | None:
            while True:
                item = await server_reads.receive()
                self.ahead.append(item)
                if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
                    return item.message

        async def receive(self) -> Any:
            return self.ahead.pop(0) if self.ahead else await server_reads.receive()

        def __aiter__(self) -> Lookahead:
            return self

        async def __anext__(self) -> Any:
            try:
                return await self.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None

        async def aclose(self) -> None:
            await server_reads.aclose()

        async def __aenter__(self) -> Lookahead:
            return self

        async def __aexit__(self, *exc: object) -> None:
            await self.aclose()

    async def serve() -> None:
        reader = Lookahead()
        opening = await reader.opening()
        opened.set()
        options = server.create_initialization_options()
        async with server.lifespan(server) as state:
            await _sdk.serve_era(server, opening, reader, server_writes, state, options)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        yield to_client, to_server
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_serve_era_serves_the_era_the_opening_request_chose(mode: str) -> None:
    seen: list[ServerRequestContext[Any, Any]] = []
    server = _server(seen)
    with anyio.fail_after(WAIT), seam("serve_era"):
        async with Client(_served_by_era(server), mode=mode, cache=None) as client:
            result = await client.call_tool("echo", {})
            negotiated = client.protocol_version
    assert isinstance(result.content[0], types.TextContent)
    assert result.content[0].text == negotiated
    assert (mode == "legacy") == (negotiated != "2026-07-28")


async def test_a_request_context_reaches_its_channel_and_connection() -> None:
    seen: list[ServerRequestContext[Any, Any]] = []
    server = _server(seen)
    with anyio.fail_after(WAIT):
        async with Client(_served_by_era(server), mode="legacy", cache=None) as client:
            await client.call_tool("echo", {})
    (ctx,) = seen
    with seam("request_channel"):
        channel = _sdk.request_channel(ctx)
        assert callable(channel.send_raw_request) and callable(channel.notify)
    with seam("connection"):
        conn = _sdk.connection(ctx)
        assert isinstance(conn, Connection)
        assert isinstance(conn.state, dict) and conn.exit_stack is not None


async def test_a_session_manager_shows_its_sessions_their_owners_and_requests_in_flight() -> None:
    """A real opening request through a real manager, held at its response to look inside."""
    manager = StreamableHTTPSessionManager(Server("seams"), json_response=True)
    body = json.dumps(INITIALIZE).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", str(len(body)).encode()),
        ],
        "user": AuthenticatedUser(AccessToken(token="t", client_id="alice", scopes=[])),
    }
    bodies = [{"type": "http.request", "body": body, "more_body": False}]
    responding, looked, answered = anyio.Event(), anyio.Event(), anyio.Event()
    session_ids: list[str] = []

    async def receive() -> MutableMapping[str, Any]:
        if bodies:
            return bodies.pop()
        await anyio.sleep_forever()
        raise AssertionError  # unreachable

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message["headers"])
            session_ids.append(headers[MCP_SESSION_ID_HEADER.encode()].decode())
            responding.set()
            await looked.wait()

    async def opening() -> None:
        await manager.handle_request(scope, receive, send)
        answered.set()

    with anyio.fail_after(WAIT):
        async with manager.run(), anyio.create_task_group() as tg:
            tg.start_soon(opening)
            await responding.wait()
            (sid,) = session_ids
            with seam("http_sessions"):
                sessions = _sdk.http_sessions(manager)
                assert list(sessions) == [sid]
                transport = sessions[sid]
                assert isinstance(transport, StreamableHTTPServerTransport) and not transport.is_terminated
                assert transport.idle_scope is not None  # public, but what SdkSessions.end cancels
            with seam("http_session_owners"):
                assert _sdk.http_session_owners(manager)[sid]["client_id"] == "alice"
            with seam("requests_in_flight"):
                assert _sdk.requests_in_flight(transport) == 1  # the opening request, mid-answer
            looked.set()
            await answered.wait()
            with seam("requests_in_flight"):
                assert _sdk.requests_in_flight(transport) == 0
            tg.cancel_scope.cancel()


async def test_a_client_session_stamps_dispatches_and_absorbs_listings() -> None:
    server = _server([])
    with anyio.fail_after(WAIT):
        async with Client(_served_by_era(server), mode="2026-07-28", cache=None) as client:
            session = client.session
            with seam("stamp"):
                data: dict[str, Any] = {"method": "tools/call", "params": {"name": "echo", "arguments": {}}}
                opts: dict[str, Any] = {}
                _sdk.stamp(session, data, opts)  # type: ignore[arg-type]
                assert data["params"]["_meta"][types.PROTOCOL_VERSION_META_KEY] == "2026-07-28"
            with seam("dispatcher"):
                raw = await _sdk.dispatcher(session).send_raw_request("tools/call", data["params"], opts)  # type: ignore[arg-type]
                assert raw["content"][0]["text"] == "2026-07-28"
            with seam("absorb_tool_listing"):
                listing = types.ListToolsResult(
                    tools=[types.Tool(name="echo", input_schema={"type": "object"})]
                )
                kept = _sdk.absorb_tool_listing(session, listing)
                assert [t.name for t in kept.tools] == ["echo"]


def test_the_otel_middleware_is_the_sdks() -> None:
    with seam("otel_middleware"):
        middleware = _sdk.otel_middleware()
        assert list(inspect.signature(middleware.__call__).parameters) == ["ctx", "call_next"]


async def test_a_stream_writer_drains_on_the_write_pipe_protocol() -> None:
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    with seam("write_pipe_protocol"), os.fdopen(write_fd, "wb", buffering=0) as pipe:
        transport, protocol = await loop.connect_write_pipe(_sdk.write_pipe_protocol, pipe)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        writer.write(b"line\n")
        await writer.drain()
        assert os.read(read_fd, 16) == b"line\n"
        transport.close()
    os.close(read_fd)


def test_the_uvicorn_server_leaves_signals_alone() -> None:
    import uvicorn

    with seam("uvicorn_server"):
        assert "capture_signals" in vars(uvicorn.Server)
        assert list(inspect.signature(uvicorn.Server.capture_signals).parameters) == ["self"]
        server = _sdk.uvicorn_server(uvicorn.Config(app="gateway.server.http:unused"))
        with server.capture_signals():
            assert not server.should_exit
