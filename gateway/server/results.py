"""What a result must be for the client that gets it, and which results are final.

``is_final`` is the one place that says whether a downstream result ends a call: a 2026-07-28
``input_required`` result does not (the client answers and sends the call again), so a keyed
call must never store it. The guard consults it (``Guard.run(..., is_final=...)``): the rounds
of a multi-round call are one key's, each a claim that ends in a release ("executed", not
stored), until the final round's result is stored and replayed. (A 2025-era server's mid-call
questions are one round to the guard: ``gateway/server/exchange.py`` holds that call open.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.downstream.errors import DownstreamError, DownstreamLost
from gateway.errors import DownstreamUnavailable

INPUT_REQUIRED: Final = "input_required"


def is_final(result: Mapping[str, Any]) -> bool:
    """Whether ``result`` ends the call (anything but a 2026-07-28 ``input_required``)."""
    return result.get("resultType") != INPUT_REQUIRED


def for_client(ctx: ServerRequestContext[Any, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A result valid for the client's revision: 2026-07-28 requires ``resultType`` on every
    result (a 2025-era downstream never sets it); older revisions drop it (the SDK's sieve)."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and "resultType" not in result:
        return {"resultType": "complete", **result}
    return result


def jsonrpc_error(exc: DownstreamError, secrets: Iterable[str] = ()) -> MCPError | None:
    """The JSON-RPC error the downstream answered with, as the client would get it directly;
    ``None`` when the failure is the gateway's to report (timeout, lost connection)."""
    cause = exc.__cause__
    if not isinstance(cause, MCPError) or cause.code in (types.REQUEST_TIMEOUT, types.CONNECTION_CLOSED):
        return None
    return MCPError(code=cause.code, message=scrub(cause.error.message, secrets), data=cause.error.data)


def as_mcp_error(exc: DownstreamError | DownstreamUnavailable, secrets: Iterable[str] = ()) -> MCPError:
    """Any downstream failure of a request other than ``tools/call``, as a JSON-RPC error."""
    if isinstance(exc, DownstreamError) and (error := jsonrpc_error(exc, secrets)) is not None:
        return error
    if isinstance(exc, DownstreamLost) and exc.reason == "timeout":
        return MCPError(code=types.REQUEST_TIMEOUT, message=str(exc))
    return MCPError(code=types.INTERNAL_ERROR, message=str(exc))


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def unknown_tool(name: str) -> dict[str, Any]:
    """What a server answers for a tool it does not have: a tool error, not a protocol error."""
    return {"content": [{"type": "text", "text": f"Unknown tool: {name}"}], "isError": True}
