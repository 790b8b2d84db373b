"""The set of downstream sessions the gateway serves, owned by one task group.

Sessions and principals: a stateful server keeps what one client did in its session (the
Node reference servers' session resources, a filesystem server's roots, a subscription), so
one session shared by every principal would let principal B see what principal A made. By
default (``sessions = "per_principal"``) each principal gets its own session, started on its
first request; a gateway that serves one principal (stdio, or HTTP without tokens) therefore
runs one session per server, as before. ``sessions = "shared"`` keeps one session for all,
for stateless servers where a process per principal is waste. The first session of every
server, the one started with the gateway, is the gateway's own principal's (``--principal``);
its tool list is the catalog every principal sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import cast

import anyio
import anyio.abc

from gateway.downstream.session import DownstreamSession
from gateway.manifests.models import ServerSpec

logger = logging.getLogger(__name__)


def session_for(spec: ServerSpec, *, connect_wait: float = 2.0) -> DownstreamSession:
    """The session kind a manifest's transport asks for: an MCP client, or a REST API's."""
    if spec.transport == "openapi":
        from gateway.downstream.openapi import OpenAPISession  # its document reader is an extra

        # OpenAPISession offers DownstreamSession's public surface, not its class; the cast lets
        # code typed against the concrete class (server.app) hold either.
        return cast(DownstreamSession, OpenAPISession(spec))
    return DownstreamSession(spec, inline_connect_timeout=connect_wait)


class DownstreamPool:
    """One supervised ``DownstreamSession`` per ``ServerSpec`` (and principal), closed together.

    Entering starts every server's first session concurrently and waits up to
    ``startup_timeout`` for each to get ready; a slow or broken downstream is logged and left
    to keep reconnecting, and never fails start-up or delays the others past that bound.
    Exiting cancels the supervisors, which close their sessions and stop their child processes.
    """

    def __init__(
        self,
        specs: Iterable[ServerSpec],
        *,
        startup_timeout: float = 10.0,
        connect_wait: float = 2.0,
        principal: str = "local",
        on_session: Callable[[DownstreamSession], None] | None = None,
    ) -> None:
        self.sessions: dict[str, DownstreamSession] = {}
        self.principal = principal
        self._connect_wait = connect_wait
        self._on_session = on_session or (lambda session: None)
        self._per_principal: dict[tuple[str, str], DownstreamSession] = {}
        for spec in specs:
            if spec.name in self.sessions:
                raise ValueError(f"duplicate downstream name {spec.name!r}")
            self.sessions[spec.name] = self._new(spec, principal)
        self.startup_timeout = startup_timeout
        self._task_group: anyio.abc.TaskGroup | None = None

    def _new(self, spec: ServerSpec, principal: str) -> DownstreamSession:
        session = session_for(spec, connect_wait=self._connect_wait)
        session.principal = principal if spec.sessions == "per_principal" else None
        self._on_session(session)
        return session

    def session(self, server: str, principal: str) -> DownstreamSession:
        """``principal``'s session to ``server``, started now if it is its first request."""
        first = self.sessions[server]
        if first.spec.sessions == "shared" or principal == self.principal:
            return first
        session = self._per_principal.get((server, principal))
        if session is None:
            if self._task_group is None:
                raise RuntimeError("the pool is not running")
            session = self._per_principal[(server, principal)] = self._new(first.spec, principal)
            self._task_group.start_soon(session.run)
            logger.info("downstream %s: a session for principal %s", server, principal)
        return session

    def sessions_of(self, principal: str) -> list[DownstreamSession]:
        """``principal``'s session to every server."""
        return [self.session(name, principal) for name in self.sessions]

    def all_sessions(self) -> list[DownstreamSession]:
        return [*self.sessions.values(), *self._per_principal.values()]

    async def __aenter__(self) -> DownstreamPool:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            for session in self.sessions.values():
                await task_group.start(session.run)
            async with anyio.create_task_group() as waiters:
                for session in self.sessions.values():
                    waiters.start_soon(self._await_startup, session)
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _await_startup(self, session: DownstreamSession) -> None:
        if not await session.wait_attempt(self.startup_timeout):
            reason = session.last_error or f"not ready within {self.startup_timeout}s"
            logger.warning("downstream %s is not ready (%s); it keeps retrying", session.name, reason)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close(exc_type, exc, tb)

    async def _close(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        task_group.cancel_scope.cancel()
        await task_group.__aexit__(exc_type, exc, tb)
