"""Every private attribute of a dependency the gateway touches, behind one door.

A proxy needs a few things its libraries keep to themselves. Each is reached here and only
here, as one function whose docstring says why it is needed; ``tests/test_sdk_seams.py`` checks
every one against the installed versions and fails naming the seam when an upgrade moves it.

- the MCP SDK (``mcp`` 2.3): the raw request channel of an inbound request, the connection it
  came on, a client session's per-revision stamp, its raw dispatcher and tool-listing learner,
  the per-era serving loops under ``Server.run``, its OpenTelemetry server middleware, the
  streamable HTTP session manager's session and owner tables, and a session transport's count
  of requests in flight;
- asyncio: the flow-control protocol a ``StreamWriter`` on a write pipe needs;
- uvicorn: a server that leaves signal handling to its host.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.server import Server
from mcp.server import runner as _runner
from mcp.server.connection import Connection
from mcp.server.context import ServerMiddleware, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.shared.dispatcher import CallOptions, DispatchContext, Dispatcher

if TYPE_CHECKING:
    import uvicorn
    from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
    from mcp.server.streamable_http import StreamableHTTPServerTransport
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager


# ---- the MCP SDK: server side ------------------------------------------------------------------


def request_channel(ctx: ServerRequestContext[Any, Any]) -> DispatchContext[Any]:
    """The inbound request's own outbound channel (its SSE stream on streamable HTTP).

    Why private: ``ServerSession`` offers only typed helpers (``create_message``,
    ``elicit_form``, ...) that re-model the params and the answer, dropping what the models
    do not name; a relay must pass the downstream's request and the client's answer as they
    are. ``send_raw_request`` and ``notify`` on this channel are public API of
    ``DispatchContext``; only the way to reach it is not.
    """
    return ctx.session._request_outbound


def connection(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The connection a request came on (per request on 2026-07-28, per session before).

    Why private: ``ServerRequestContext`` exposes a per-request ``ServerSession``; the
    connection, which lasts (its standalone channel, its exit stack, its identity), is public
    only on the high-level ``Context`` that the low-level server does not build.
    """
    return ctx.session._connection


async def serve_era(
    server: Server[Any],
    opening: types.JSONRPCRequest | None,
    read_stream: Any,
    write_stream: Any,
    lifespan_state: Any,
    init_options: InitializationOptions,
) -> None:
    """Serve one stream connection in the era its opening request chose, as ``Server.run`` does.

    Why private: ``Server.run`` (``serve_dual_era_loop``) peeks at the first request through a
    relay task and a memory stream that then carry every later message too: two checkpoints
    and a hop between tasks per message, for a decision made once. The gateway's stdio reader
    can look ahead itself (``gateway/server/stdio.py``), so it makes the same decision, by the
    SDK's own rule, and runs the chosen loop on its streams directly.
    """
    modern = (
        opening is not None
        and opening.method != "initialize"
        and _runner._has_modern_envelope(opening.params)
    )
    try:
        if modern:
            await _runner._serve_modern_stream(
                server, read_stream, write_stream, lifespan_state=lifespan_state, raise_exceptions=False
            )
        else:
            await _runner._serve_legacy_stream(
                server,
                read_stream,
                write_stream,
                lifespan_state=lifespan_state,
                session_id=None,
                init_options=init_options,
                raise_exceptions=False,
            )
    finally:
        await write_stream.aclose()


def otel_middleware() -> ServerMiddleware[Any]:
    """The SDK's OpenTelemetry server middleware: one span per inbound request.

    Why private: it lives in ``mcp.server._otel``; the SDK installs it by default, the gateway
    takes it off its hot path and puts it back (with its own attributes) only when traces are
    asked for (``gateway/tracing/otel.py``).
    """
    from mcp.server._otel import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware()


# ---- the MCP SDK: streamable HTTP sessions --------------------------------------------------------


def http_sessions(manager: StreamableHTTPSessionManager) -> dict[str, StreamableHTTPServerTransport]:
    """The manager's live sessions: session id → its transport (the manager's own dict, not a copy).

    Why private: the manager caps sessions only in total (``max_sessions``); the gateway caps
    them per principal (``gateway/server/http_limits.py``) and must see which are open.
    """
    return manager._server_instances


def http_session_owners(manager: StreamableHTTPSessionManager) -> dict[str, AuthorizationContext]:
    """Who opened each session: session id → its principal (the manager's own dict).

    Why private: the manager records the opening credential only to refuse another one's
    requests; the per-principal cap counts a principal's sessions by it.
    """
    return manager._session_owners


def requests_in_flight(transport: StreamableHTTPServerTransport) -> int:
    """How many requests a session's transport is serving now (an open GET stream counts).

    Why private: the transport counts them to suspend its idle timeout and exposes no reading
    of it; the per-principal cap ends only a session its idle timeout could have ended.
    """
    return transport._requests_in_flight


# ---- the MCP SDK: client side ------------------------------------------------------------------


def stamp(session: ClientSession, data: dict[str, Any], opts: CallOptions) -> None:
    """Put the negotiated revision's envelope on an outgoing request, as the session would.

    Why private: the gateway sends requests as raw dicts (``send_raw_request``) so results
    pass through unvalidated and untouched; the envelope (2026-07-28 ``_meta`` fields, the
    ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name`` headers) is the session's own stamp.
    """
    session._stamp(data, opts)


def dispatcher(session: ClientSession) -> Dispatcher[Any]:
    """The raw dispatcher under a client session (``send_raw_request``, ``notify``).

    Why private: ``ClientSession.send_request`` validates every result against the
    revision's model; a pass-through forwards the downstream's result as it is.
    """
    return session._dispatcher


def absorb_tool_listing(session: ClientSession, listing: types.ListToolsResult) -> types.ListToolsResult:
    """Let the session learn a tool listing fetched raw (``x-mcp-header`` → ``Mcp-Param-*``).

    Why private: the gateway lists tools raw (see ``dispatcher``), and only the session knows
    how to derive the 2026-07-28 per-tool header mirroring from a listing.
    """
    return session._absorb_tool_listing(listing, complete=True)


# ---- asyncio and uvicorn ---------------------------------------------------------------------------


def write_pipe_protocol() -> asyncio.BaseProtocol:
    """The protocol for ``loop.connect_write_pipe`` under an ``asyncio.StreamWriter``.

    Why private: a ``StreamWriter`` needs a protocol with ``_drain_helper`` (flow control);
    asyncio has no public one for a write-only pipe, only ``asyncio.streams.FlowControlMixin``.
    """
    return asyncio.streams.FlowControlMixin()


def uvicorn_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that installs no signal handlers: the CLI owns signals and cancels it.

    Why private: uvicorn has no option for it; ``Server.capture_signals`` is its internal hook
    (it swaps in its own SIGINT/SIGTERM handlers while serving and re-raises them after).
    """
    import contextlib
    from collections.abc import Iterator

    import uvicorn

    class _Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _Quiet(config)
