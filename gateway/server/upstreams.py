"""The handshake-era client connections this process serves, by principal.

What a downstream says outside any request (a log message, a list that changed) goes to
the clients of the principal whose downstream session said it; only handshake-era
connections have a channel for that (a 2026-07-28 client hears of changes on its
``subscriptions/listen`` stream, see ``gateway.audit.subscriptions``). Their roots are asked
here too, for a downstream that asks for roots outside any request.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from gateway import _sdk
from gateway.downstream.relay import LOG_LEVELS
from gateway.server.upstream import DEFAULT_LEGACY_LOG_LEVEL, LOG_LEVEL_STATE, is_modern

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT: Final = 2.0  # a client that stopped reading must not hold up a downstream
ROOTS_TIMEOUT: Final = 10.0


class Upstreams:
    def __init__(self) -> None:
        self._conns: dict[int, tuple[str, Connection]] = {}

    def see(self, ctx: ServerRequestContext[Any, Any], principal: str) -> None:
        """Remember the connection of a handshake-era request until it closes."""
        if is_modern(ctx):
            return
        conn = _sdk.connection(ctx)
        ident = id(conn)
        if ident not in self._conns:
            self._conns[ident] = (principal, conn)
            conn.exit_stack.callback(self._conns.pop, ident, None)

    def of(self, principal: str | None) -> list[Connection]:
        return [conn for owner, conn in self._conns.values() if principal is None or owner == principal]

    async def notify(self, principal: str | None, method: str, params: dict[str, Any] | None) -> None:
        for conn in self.of(principal):
            if method == "notifications/message" and not _takes(conn, str((params or {}).get("level"))):
                continue
            with anyio.move_on_after(NOTIFY_TIMEOUT):
                await conn.notify(method, params or None)

    async def roots(self, principal: str | None) -> dict[str, Any] | None:
        """The roots of the first of ``principal``'s clients that has them, asked now."""
        for conn in self.of(principal):
            caps = conn.client_capabilities
            if caps is None or caps.roots is None or not conn.has_standalone_channel:
                continue
            try:
                with anyio.fail_after(ROOTS_TIMEOUT):
                    return await conn.send_raw_request("roots/list", None)
            except (MCPError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                logger.info("a client did not give its roots: %s", exc)
        return None


def _takes(conn: Connection, level: str) -> bool:
    floor = conn.state.get(LOG_LEVEL_STATE, DEFAULT_LEGACY_LOG_LEVEL)
    if level not in LOG_LEVELS or floor not in LOG_LEVELS:
        return False
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(floor)


__all__ = ["Upstreams", "types"]
