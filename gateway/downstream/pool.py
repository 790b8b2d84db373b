"""The set of downstream sessions the gateway serves, owned by one task group."""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
    """One supervised ``DownstreamSession`` per ``ServerSpec``, started together, closed together.

    Entering starts every session concurrently and waits up to ``startup_timeout`` for each
    to get ready; a slow or broken downstream is logged and left to keep reconnecting, and
    never fails start-up or delays the others past that bound. Exiting cancels the
    supervisors, which close their sessions and stop their child processes.
    """

    def __init__(
        self,
        specs: Iterable[ServerSpec],
        *,
        startup_timeout: float = 10.0,
        connect_wait: float = 2.0,
    ) -> None:
        self.sessions: dict[str, DownstreamSession] = {}
        for spec in specs:
            if spec.name in self.sessions:
                raise ValueError(f"duplicate downstream name {spec.name!r}")
            self.sessions[spec.name] = session_for(spec, connect_wait=connect_wait)
        self.startup_timeout = startup_timeout
        self._task_group: anyio.abc.TaskGroup | None = None

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
