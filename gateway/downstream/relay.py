"""Who a downstream request is made for, and how to reach that client while it runs.

While a downstream server serves a request it may ask the client something (sampling,
elicitation, roots), report progress, or log. The gateway is that server's client; the answer
must come from the upstream client whose request caused it, and from no other. A ``Caller``
is that upstream request as the downstream side sees it: its principal, the capabilities its
client declared, what of its request to pass on (``_meta``, ``inputResponses``...), and a
``Channel`` back to it.

The caller travels in a ``ContextVar`` (``calling_for``) from the MCP handler to the
downstream session, because the idempotency guard in between knows no MCP session and must
not have to carry one.

Which in-flight request a server→client request belongs to is not on the wire of a 2025-era
downstream: ``pick`` takes the one request in flight on that connection, or, when several
are, the oldest; with per-principal downstream sessions (the default, see
``gateway/downstream/pool.py``) they are all one principal's, and on a shared session a
request is never relayed across principals. On 2026-07-28 the question rides the result of
the request that asks it, so there is nothing to guess.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

# Methods a server may send its client (2025-era JSON-RPC requests; 2026-07-28 input requests).
SAMPLING: Final = "sampling/createMessage"
ELICITATION: Final = "elicitation/create"
ROOTS: Final = "roots/list"
TASKS_EXTENSION: Final = (
    "io.modelcontextprotocol/tasks"  # passed on: tasks go through (gateway.downstream.tasks)
)


class Channel(Protocol):
    """The way back to one upstream request."""

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Ask the client; its raw answer. Raises ``MCPError`` with the client's error."""
        ...

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """A notification about this request (a log message); best effort."""
        ...

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Progress on this request, under the client's own token; a no-op if it asked for none."""
        ...


def unsupported(method: str) -> MCPError:
    """What a client without the capability answers: JSON-RPC "method not found"."""
    return MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data=method)


@dataclass(eq=False)
class Caller:
    """One upstream request, as the downstream request made for it sees it."""

    principal: str
    channel: Channel | None = None  # None: nothing can be relayed (no back-channel)
    capabilities: types.ClientCapabilities | None = None
    connection: object | None = None  # the upstream connection; None for stateless requests
    meta: dict[str, Any] = field(default_factory=dict)  # upstream _meta to pass on
    params: dict[str, Any] = field(default_factory=dict)  # other upstream params to pass on
    log_level: str | None = None  # the lowest level the client takes; None: no log messages
    wants_progress: bool = False
    takes_input_required: bool = False  # a 2026-07-28 client: an input_required result may go back
    _relays: set[anyio.CancelScope] = field(default_factory=set, repr=False)
    _closed: bool = field(default=False, repr=False)

    def can(self, method: str, params: Mapping[str, Any]) -> bool:
        """Whether this caller's client could answer ``method`` (it declared the capability)."""
        return self.channel is not None and can_answer(self.capabilities, method, params)

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Relay a server→client request; cancelled when the request it belongs to ends."""
        if self.channel is None or self._closed or not self.can(method, params):
            raise unsupported(method)
        with anyio.CancelScope() as scope:
            self._relays.add(scope)
            try:
                return await self.channel.request(method, params)
            finally:
                self._relays.discard(scope)
        raise MCPError(code=types.REQUEST_TIMEOUT, message="The request this belonged to has ended")

    def takes_log(self, level: str) -> bool:
        if self.log_level is None or level not in LOG_LEVELS or self.log_level not in LOG_LEVELS:
            return False
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)

    async def log(self, params: dict[str, Any]) -> None:
        if self.channel is not None and self.takes_log(str(params.get("level"))):
            await self.channel.notify("notifications/message", params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.channel is not None and self.wants_progress:
            await self.channel.progress(progress, total, message)

    def close(self) -> None:
        """The request ended: relays still waiting on the client are abandoned."""
        self._closed = True
        for scope in list(self._relays):
            scope.cancel()


def can_answer(capabilities: types.ClientCapabilities | None, method: str, params: Mapping[str, Any]) -> bool:
    """The capability check a server must make before asking a client (spec: MUST NOT otherwise)."""
    if capabilities is None:
        return False
    if method == SAMPLING:
        sampling = capabilities.sampling
        if sampling is None:
            return False
        if (params.get("tools") or params.get("toolChoice")) and sampling.tools is None:
            return False
        return params.get("includeContext") in (None, "none") or sampling.context is not None
    if method == ELICITATION:
        elicitation = capabilities.elicitation
        if elicitation is None:
            return False
        if params.get("mode") == "url":
            return elicitation.url is not None
        # An empty elicitation capability means form mode (the 2025-06-18 shape).
        return elicitation.form is not None or elicitation.url is None
    if method == ROOTS:
        return capabilities.roots is not None
    return False


def relayable(capabilities: types.ClientCapabilities | None) -> types.ClientCapabilities:
    """The part of a client's capabilities the gateway passes on to a downstream (per request,
    on 2026-07-28): what it can relay back, nothing of tasks or experimental features."""
    if capabilities is None:
        return types.ClientCapabilities()
    extensions = {k: v for k, v in (capabilities.extensions or {}).items() if k == TASKS_EXTENSION}
    return types.ClientCapabilities(
        sampling=capabilities.sampling,
        elicitation=capabilities.elicitation,
        roots=capabilities.roots,
        extensions=extensions or None,
    )


def pick(callers: Sequence[Caller]) -> Caller | None:
    """The in-flight request a server→client message belongs to (see the module docstring).

    Never a guess across principals: when requests of two principals are in flight on one
    connection (``sessions = "shared"``), nobody is asked and the server gets "method not found".
    """
    if not callers:
        return None
    first = callers[0]
    if any(caller.principal != first.principal for caller in callers):
        return None
    return first


_current: ContextVar[Caller | None] = ContextVar("idem_gateway_caller", default=None)


def current_caller() -> Caller | None:
    return _current.get()


@contextmanager
def calling_for(caller: Caller) -> Iterator[Caller]:
    """Downstream requests made in this block are made for ``caller``."""
    token = _current.set(caller)
    try:
        yield caller
    finally:
        _current.reset(token)


def forget_caller() -> None:
    """In a task that serves no request (a session's supervisor), there is no caller."""
    _current.set(None)
