"""The upstream request as a ``Caller``: what of it a downstream gets, and the way back to it.

Passed on: the client's ``_meta`` (trace context and anything else) except what the gateway
owns (keys under ``idem-gateway/``) and the 2026-07-28 envelope (each downstream session
stamps its own; the capabilities and log level are re-derived from the caller), and every
param the gateway does not interpret (``inputResponses``, ``requestState``, ``task``...).
``progressToken`` is not passed as such: each downstream request gets its own token and the
progress comes back under the client's.

The way back: a 2025-era client with a back-channel is asked on its request's own stream; a
2026-07-28 client takes requests only inside an ``input_required`` result, which
``gateway/server/exchange.py`` builds; a client without a back-channel (stateless HTTP) can
be asked nothing, as if it lacked the capability.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway import _sdk
from gateway.downstream.relay import ELICITATION, Caller, unsupported
from gateway.meta import PREFIX

ENVELOPE_META: Final = frozenset(
    {
        types.PROTOCOL_VERSION_META_KEY,
        types.CLIENT_INFO_META_KEY,
        types.CLIENT_CAPABILITIES_META_KEY,
        types.LOG_LEVEL_META_KEY,
        "progressToken",
    }
)
LOG_LEVEL_STATE: Final = "idem_gateway.log_level"  # a handshake-era connection's logging/setLevel
DEFAULT_LEGACY_LOG_LEVEL: Final = "debug"  # before logging/setLevel a 2025-era server sends every level


def is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def passed_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The client's ``_meta`` as a downstream gets it."""
    if not meta:
        return {}
    return {k: v for k, v in meta.items() if k not in ENVELOPE_META and not k.startswith(PREFIX)}


def passed_params(ctx: ServerRequestContext[Any, Any], handled: Iterable[str]) -> dict[str, Any]:
    """The request's params the gateway does not interpret, as the client sent them."""
    raw = ctx.params or {}
    skip = {*handled, "_meta"}
    return {k: v for k, v in raw.items() if k not in skip}


class RequestChannel:
    """Back to one inbound request: its own stream (2025-era), or notifications only."""

    def __init__(self, ctx: ServerRequestContext[Any, Any], *, requests: bool) -> None:
        self._out = _sdk.request_channel(ctx)
        self._requests = requests

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if not self._requests or not self._out.can_send_request:
            raise unsupported(method)
        return await self._out.send_raw_request(method, for_handshake_era(method, params))

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        try:
            await self._out.notify(method, params)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the request is over; a notification about it has nowhere to go

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        try:
            await self._out.progress(progress, total, message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


def raw_meta(ctx: ServerRequestContext[Any, Any]) -> Mapping[str, Any]:
    """The request's ``_meta`` as the client sent it (``ctx.meta`` is re-keyed by the SDK's model)."""
    meta = (ctx.params or {}).get("_meta")
    return meta if isinstance(meta, Mapping) else {}


def for_handshake_era(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A question as a 2025-era client must get it: a URL elicitation carries an
    ``elicitationId`` there (2026-07-28 dropped it), so one asked without gets one."""
    if method == ELICITATION and params.get("mode") == "url" and "elicitationId" not in params:
        return {**params, "elicitationId": f"idem-gateway-{uuid.uuid4().hex}"}
    return params


def log_level(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The lowest level this request's client takes: its 2026-07-28 opt-in, or its connection's
    ``logging/setLevel`` (every level until it sets one, as a 2025-era server does)."""
    if is_modern(ctx):
        level = raw_meta(ctx).get(types.LOG_LEVEL_META_KEY)
        return level if isinstance(level, str) else None
    level = _sdk.connection(ctx).state.get(LOG_LEVEL_STATE)
    return level if isinstance(level, str) else DEFAULT_LEGACY_LOG_LEVEL


def caller_for(ctx: ServerRequestContext[Any, Any], principal: str, *, handled: Iterable[str]) -> Caller:
    """The ``Caller`` for one inbound request (the params in ``handled`` are the gateway's own)."""
    modern = is_modern(ctx)
    meta = raw_meta(ctx)
    return Caller(
        principal=principal,
        channel=RequestChannel(ctx, requests=not modern),
        capabilities=ctx.session.client_capabilities,
        connection=None if modern else _sdk.connection(ctx),
        meta=passed_meta(meta),
        params=passed_params(ctx, handled),
        log_level=log_level(ctx),
        wants_progress="progressToken" in meta,
        takes_input_required=modern,
    )
