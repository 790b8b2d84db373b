"""What keeps slow, many or hostile HTTP clients from taking the server down without a token.

The token is checked once a request's headers are in, so everything before that must be
bounded by the server itself:

- ``BoundedHttpProtocol``: uvicorn's HTTP/1.1 protocol (httptools) with a *header timeout*. A
  connection that has not delivered a complete request head within ``header_timeout`` seconds of opening
  (or of its previous response) gets ``408`` and is closed; trickling one byte a second buys
  nothing. uvicorn's own ``timeout_keep_alive`` only covers a connection that sends nothing.
- The connection cap is uvicorn's ``limit_concurrency``: past ``max_connections`` open
  connections a new request is answered ``503`` at once.
- ``Listener``: the listening socket. When ``accept`` fails for want of descriptors (EMFILE),
  asyncio logs, stops accepting and retries a second later, but keeps calling ``accept`` for
  the rest of its batch first, each failure scheduling one more retry: the retries multiply
  and the log fills (half a million lines a minute). The listener answers "nothing to accept"
  for half a second after such a failure, so each failure costs one retry and one log record.
- ``RateLimitFilter`` keeps the log lines a client can trigger at will (accept failures,
  ``Exceeded concurrency limit``, ``Invalid HTTP request``) to one per interval, with a count.
- ``SessionCap``: at most ``per_principal`` handshake-era sessions per principal. Opening one
  more first ends that principal's oldest *idle* session (no request in flight, no open
  stream), as the idle timeout would have; if every one is busy, the request gets ``429``.

The SDK keeps its sessions in private attributes; ``SdkSessions`` reads them through
``gateway._sdk`` (whose seams ``tests/test_sdk_seams.py`` checks) and refuses to start if they moved.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import _sdk
from gateway.server.limits import Clock, RateLimitedLog

logger = logging.getLogger(__name__)

__all__ = [
    "BoundedHttpProtocol",
    "Listener",
    "RateLimitFilter",
    "SdkSessions",
    "SessionCap",
    "bounded_protocol",
    "install_log_rate_limits",
]

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 0.5  # less than asyncio's own one-second retry, which re-arms the listener
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 34\r\n\r\nRequest headers took too long.\r\n\r\n"
)


# ---- the header timeout ----------------------------------------------------------------------


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools (its C parser: about a tenth of a call's CPU
    less than h11's pure Python), with a deadline for each request's head (see the module
    docstring)."""

    header_timeout: ClassVar[float] = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _head_in = False  # the current request's head is complete: its deadline is met

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._head_in = True
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets its own deadline

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._head_in = False
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        waiting = not self._head_in and (self.cycle is None or self.cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()


def bounded_protocol(header_timeout: float) -> type[BoundedHttpProtocol]:
    """A protocol class with this header timeout, for ``uvicorn.Config(http=...)``."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"header_timeout": header_timeout})


# ---- accepting when out of descriptors ----------------------------------------------------------


class Listener(socket.socket):
    """A listening socket whose ``accept`` pauses briefly after running out of descriptors."""

    _paused_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() < self._paused_until:
            raise BlockingIOError(errno.EAGAIN, "paused: out of file descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._paused_until = time.monotonic() + ACCEPT_PAUSE
            raise


# ---- log lines a client can trigger -------------------------------------------------------------


class RateLimitFilter(logging.Filter):
    """At most one record per interval per message (its first line), the rest counted."""

    def __init__(self, interval: float = 10.0, clock: Clock = time.monotonic) -> None:
        super().__init__()
        self._log = RateLimitedLog(logger, interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: let the handler report it as logging does
            return True
        held = self._log.allow(message.split("\n", 1)[0][:200])
        if held is None:
            return False
        if held:
            record.msg, record.args = message + self._log.suffix(held), None
        return True


# Loggers whose warnings and errors a client can cause in a loop.
CLIENT_TRIGGERED_LOGGERS = ("asyncio", "uvicorn.error", "mcp.server.streamable_http_manager")


def install_log_rate_limits(interval: float = 10.0, clock: Clock = time.monotonic) -> RateLimitFilter:
    """Rate-limit the client-triggered loggers; a logger that already has a limiter keeps it."""
    limiter = RateLimitFilter(interval, clock)
    for name in CLIENT_TRIGGERED_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in log.filters):
            log.addFilter(limiter)
    return limiter


# ---- sessions per principal ---------------------------------------------------------------------


class SdkSessions:
    """Read-only view of the SDK session manager's sessions, through ``gateway._sdk``."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager
        self._ended: weakref.WeakSet[StreamableHTTPServerTransport] = weakref.WeakSet()  # not yet discarded
        # Fail at start-up, not at the first request, if the SDK changed under a seam.
        checks: tuple[tuple[str, Callable[[], object], type], ...] = (
            ("http_sessions", lambda: _sdk.http_sessions(manager), dict),
            ("http_session_owners", lambda: _sdk.http_session_owners(manager), dict),
            ("requests_in_flight", lambda: _sdk.requests_in_flight(StreamableHTTPServerTransport(None)), int),
        )
        for seam, read, kind in checks:
            try:
                moved = not isinstance(read(), kind)
            except AttributeError:
                moved = True
            if moved:
                raise RuntimeError(f"the MCP SDK changed under gateway._sdk.{seam}: update that seam")

    def of(self, principal: str) -> list[tuple[str, StreamableHTTPServerTransport]]:
        """``(session id, transport)`` of ``principal``'s live sessions, oldest first."""
        owners = _sdk.http_session_owners(self.manager)
        live = []
        for sid, transport in list(_sdk.http_sessions(self.manager).items()):
            owner = owners.get(sid)
            if owner is None or owner["client_id"] != principal:
                continue
            if not transport.is_terminated and transport not in self._ended:
                live.append((sid, transport))
        return live

    @staticmethod
    def idle(transport: StreamableHTTPServerTransport) -> bool:
        """No request being served and no open GET stream."""
        return _sdk.requests_in_flight(transport) == 0

    def end(self, transport: StreamableHTTPServerTransport) -> bool:
        """End a session the way its idle timeout would; False if it has none to cancel."""
        scope = transport.idle_scope  # public: the transport's own idle timeout
        if scope is None:
            return False
        scope.cancel()
        self._ended.add(transport)
        return True


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class SessionCap:
    """At most ``per_principal`` handshake-era sessions per principal (see the module docstring)."""

    def __init__(self, app: ASGIApp, sessions: SdkSessions | None, *, per_principal: int, path: str) -> None:
        self.app = app
        self.sessions = sessions
        self.per_principal = per_principal
        self.path = path
        self._opening: dict[str, int] = {}
        self._log = RateLimitedLog(logger, 60.0)

    def _opens_session(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            return False
        if _header(scope, MCP_SESSION_ID_HEADER.encode()) is not None:
            return False
        version = _header(scope, MCP_PROTOCOL_VERSION_HEADER.encode())
        return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.sessions is None or not self._opens_session(scope):
            await self.app(scope, receive, send)
            return
        user = scope.get("user")
        principal = user.access_token.client_id if isinstance(user, AuthenticatedUser) else ""
        if not self._admit(principal):
            await _too_many_sessions(self.per_principal)(scope, receive, send)
            return
        # Until its response starts, the new session may not be in the SDK's table yet: count
        # it here meanwhile, so that a burst of openings cannot all pass one check.
        self._opening[principal] = self._opening.get(principal, 0) + 1
        counted = True

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._opening[principal] -= 1
                if not self._opening[principal]:
                    del self._opening[principal]

        async def send_and_uncount(message: Message) -> None:
            if message["type"] == "http.response.start":
                uncount()
            await send(message)

        try:
            await self.app(scope, receive, send_and_uncount)
        finally:
            uncount()

    def _admit(self, principal: str) -> bool:
        assert self.sessions is not None
        live = self.sessions.of(principal)
        excess = len(live) + self._opening.get(principal, 0) + 1 - self.per_principal
        for _, transport in live:
            if excess <= 0:
                break
            if self.sessions.idle(transport) and self.sessions.end(transport):
                excess -= 1
        if excess > 0:
            self._log.log(
                logging.WARNING,
                principal,
                "principal %r has %d sessions open, all busy: a new one was refused",
                principal,
                len(live),
            )
            return False
        return True


def _too_many_sessions(limit: int) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32000,
                "message": (
                    f"Too many open sessions for this principal (at most {limit}, all busy): "
                    "close one (HTTP DELETE) or reuse it"
                ),
            },
        },
        status_code=429,
        headers={"Retry-After": "5"},
    )
