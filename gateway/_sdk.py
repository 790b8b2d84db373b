"""Every private attribute of the MCP SDK the gateway touches, behind one door.

A proxy needs a few things the SDK (mcp 2.3) keeps to itself: the raw, unvalidated request
channel of one inbound request, the connection a request came on, the per-revision stamp a
client session puts on its requests, and the raw dispatcher under a client session. Each is
reached here and only here, with the reason it is needed; ``tests/test_sdk_seams.py`` fails
loudly when an SDK upgrade moves one of them.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.client.session import ClientSession
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.dispatcher import CallOptions, DispatchContext, Dispatcher


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
