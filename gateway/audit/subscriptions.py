"""Tell a subscriber when a key's record changes, in each protocol era's own way.

- Handshake era (2025-11-25 and earlier): ``resources/subscribe`` on a connection, then
  ``notifications/resources/updated`` on that connection's standalone channel.
- 2026-07-28: ``subscriptions/listen``; the SDK's ``ListenHandler`` serves the stream.

Both are scoped to the subscriber's principal: a legacy subscription remembers it, and each
principal gets its own listen bus, so a change to one principal's key ``K`` never wakes another
principal watching its own ``K``. Changes come from ``Guard.listeners`` (this process only).

Both are bounded: a URI is at most ``MAX_URI_LENGTH`` characters, a connection (or one listen
stream) watches at most ``MAX_SUBSCRIPTIONS_PER_SESSION`` URIs, and a principal holds at most
``MAX_LISTEN_STREAMS`` listen streams; a connection's subscriptions go when it closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated, ServerEvent
from mcp.shared.exceptions import MCPError

from gateway import _sdk
from gateway.audit.uris import key_uri
from gateway.server.limits import MAX_SUBSCRIPTIONS_PER_SESSION, check_uri

logger = logging.getLogger(__name__)

MAX_PER_CONNECTION = MAX_SUBSCRIPTIONS_PER_SESSION
MAX_LISTEN_STREAMS = 100  # per principal, on this replica
NOTIFY_TIMEOUT = 2.0

PrincipalOf = Callable[[ServerRequestContext[Any, Any]], str]


@dataclass(slots=True)
class _Connection:
    """One handshake-era connection's subscriptions, and the session to notify it through."""

    principal: str
    session: ServerSession
    uris: set[str] = field(default_factory=set)


class Subscriptions:
    """The subscribe/unsubscribe/listen handlers and the guard listener that feeds them."""

    def __init__(self, principal_of: PrincipalOf) -> None:
        self._principal_of = principal_of
        self._legacy: dict[int, _Connection] = {}
        self._buses: dict[str, InMemorySubscriptionBus] = {}
        self._listen: dict[str, ListenHandler] = {}

    def handlers(self) -> dict[str, Any]:
        """Keyword arguments for the low-level ``Server``."""
        return {
            "on_subscribe_resource": self.subscribe,
            "on_unsubscribe_resource": self.unsubscribe,
            "on_subscriptions_listen": self.listen,
        }

    # ---- handshake era -----------------------------------------------------------------------

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """Honour any URI (one that never changes simply never fires); only audit keys fire."""
        uri = str(params.uri)
        check_uri(uri)
        conn = self._connection_of(ctx)
        if uri not in conn.uris and len(conn.uris) >= MAX_PER_CONNECTION:
            raise MCPError(
                code=types.INVALID_REQUEST,
                message=f"at most {MAX_PER_CONNECTION} subscriptions per session: unsubscribe from one first",
            )
        conn.uris.add(uri)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        conn = self._legacy.get(_connection_id(ctx))
        if conn is not None:
            conn.uris.discard(str(params.uri))
        return types.EmptyResult()

    def _connection_of(self, ctx: ServerRequestContext[Any, Any]) -> _Connection:
        ident = _connection_id(ctx)
        conn = self._legacy.get(ident)
        if conn is None:
            conn = self._legacy[ident] = _Connection(self._principal_of(ctx), ctx.session)
            # Forget the connection's subscriptions when it closes (the SDK unwinds this stack).
            _sdk.connection(ctx).exit_stack.callback(self._legacy.pop, ident, None)
        return conn

    # ---- 2026-07-28 --------------------------------------------------------------------------

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """One listen stream, served by the SDK on the caller's own principal's bus."""
        uris = params.notifications.resource_subscriptions or []
        if len(uris) > MAX_PER_CONNECTION:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"at most {MAX_PER_CONNECTION} resource subscriptions per stream",
            )
        for uri in uris:
            check_uri(uri)
        principal = self._principal_of(ctx)
        handler = self._listen.get(principal)
        if handler is None:
            bus = self._buses[principal] = InMemorySubscriptionBus()
            handler = self._listen[principal] = ListenHandler(bus, max_subscriptions=MAX_LISTEN_STREAMS)
        return await handler(ctx, params)

    def subscription_count(self) -> int:
        """Handshake-era subscriptions held now, over every connection (for tests and metrics)."""
        return sum(len(conn.uris) for conn in self._legacy.values())

    # ---- changes -----------------------------------------------------------------------------

    async def record_changed(self, principal: str, key: str) -> None:
        """A ``Guard`` listener: notify whoever of ``principal`` watches this key's resource."""
        await self.publish(principal, ResourceUpdated(uri=key_uri(key)))

    async def publish(self, principal: str | None, event: ServerEvent) -> None:
        """Tell ``principal``'s subscribers (every principal's when ``None``) about ``event``:
        its listen streams, and for a resource update its legacy subscribers of that URI."""
        for owner, bus in list(self._buses.items()):
            if principal is None or owner == principal:
                await bus.publish(event)
        if not isinstance(event, ResourceUpdated):
            return
        uri = event.uri
        for ident, conn in list(self._legacy.items()):
            if (principal is not None and conn.principal != principal) or uri not in conn.uris:
                continue
            # Bounded: a client that stopped reading must not hold up the call path.
            with anyio.move_on_after(NOTIFY_TIMEOUT) as scope:
                try:
                    await conn.session.send_resource_updated(uri)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._legacy.pop(ident, None)  # the connection is gone
            if scope.cancelled_caught:
                logger.warning("a subscriber did not take a resource update in time")


def _connection_id(ctx: ServerRequestContext[Any, Any]) -> int:
    """The connection a request came on. ``ServerSession`` is per request; its connection is
    what lasts (``gateway._sdk.connection``)."""
    return id(_sdk.connection(ctx))
