"""One long-lived MCP client session per downstream server, kept alive by a supervisor task.

The supervisor (``run``) owns the connection: it connects, lists what the server offers,
waits for the connection to die, and reconnects with backoff. Callers never own SDK
context managers; they borrow the live connection for one request. Results travel as raw
dicts: the gateway forwards them verbatim, so nothing is re-modelled or re-validated on the
hot path (``tools/call`` goes straight to the SDK dispatcher).

Protocol revision: ``mcp.Client(mode="auto")`` probes ``server/discover`` (2026-07-28) and
falls back to the ``initialize`` handshake (2025-era servers), so each downstream speaks the
newest revision it supports.
"""

from __future__ import annotations

import enum
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TextIO

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client
from mcp.client._transport import Transport, TransportStreams
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError

from gateway import meta
from gateway.downstream.errors import (
    BEFORE_EXECUTION_CODES,
    DownstreamLost,
    DownstreamRejected,
    DownstreamUnavailable,
    LostReason,
    rejected_before_execution_status,
)
from gateway.downstream.transport import WIRE, Wire, http_transport, stdio_transport
from gateway.manifests.models import ServerSpec

logger = logging.getLogger(__name__)

CLIENT_INFO: Final = types.Implementation(name="idem-gateway", version="0.1.0")
_LIST_PAGE_CAP: Final = 100  # a paginator that never ends cannot hang a (re)connect
_LIST_CHANGED: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
    }
)

Clock = Callable[[], float]


class State(enum.Enum):
    """Where the supervisor is; ``READY`` is the only state in which calls are sent."""

    CONNECTING = "connecting"
    READY = "ready"
    DOWN = "down"  # waiting out the backoff before the next attempt
    CLOSED = "closed"


class _WatchedReadStream:
    """The transport's read stream, reporting its end: that is how a dead downstream shows.

    Stdio EOF (the child exited) and a torn-down HTTP transport both end this stream; the
    SDK has no public "connection lost" signal, so the supervisor waits on this one.
    """

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:  # the dispatcher duck-types this off the stream
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._on_end()
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _WatchedTransport:
    """Wraps an SDK transport so the end of its read stream is observable."""

    def __init__(self, inner: Transport, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    async def __aenter__(self) -> TransportStreams:
        read_stream, write_stream = await self._inner.__aenter__()
        return _WatchedReadStream(read_stream, self._on_end), write_stream

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._on_end()
        return await self._inner.__aexit__(exc_type, exc, tb)


@dataclass(eq=False)
class _Connection:
    """One live client session; replaced wholesale on reconnect."""

    session: ClientSession
    protocol_version: str
    capabilities: types.ServerCapabilities
    lost: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)  # lists changed, or lost

    def mark_lost(self) -> None:
        self.lost.set()
        self.changed.set()

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the raw result dict.

        Bypasses ``ClientSession.send_request`` on purpose: it has no per-call headers and
        it validates every result against the revision's model, which a pass-through does
        not need. What it does first, the revision stamp (``_meta`` protocol fields on
        2026-07-28, the ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name`` headers), is
        kept by calling the session's own stamp.
        """
        opts: CallOptions = {"headers": dict(headers)} if headers else {}
        data: dict[str, Any] = {"method": method, "params": params}
        self.session._stamp(data, opts)  # the SDK's per-revision stamp; headers set here win
        if timeout is not None:
            opts["timeout"] = timeout
        return await self.session._dispatcher.send_raw_request(method, data["params"], opts)


class DownstreamSession:
    """A supervised client session to one downstream server (``ServerSpec``).

    Start ``run`` in a task group; it calls ``task_status.started()`` at once and keeps the
    session connected until cancelled. Calls made while the downstream is down fail at once
    with ``DownstreamUnavailable`` (nothing was sent), never hang.
    """

    def __init__(
        self,
        spec: ServerSpec,
        *,
        connect_timeout: float = 30.0,
        inline_connect_timeout: float = 2.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        clock: Clock = anyio.current_time,
        errlog: TextIO | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.connect_timeout = connect_timeout
        self.inline_connect_timeout = inline_connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self._errlog = errlog
        self._state = State.CONNECTING
        self._state_changed = anyio.Event()
        self._attempts_finished = 0  # connect attempts that ended, in success or failure
        self._conn: _Connection | None = None
        self._retry_at = -math.inf
        self._wake = anyio.Event()
        self._closing = False
        self.last_error: str | None = None
        self.tools: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.resource_templates: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def ready(self) -> bool:
        conn = self._conn
        return self._state is State.READY and conn is not None and not conn.lost.is_set()

    @property
    def protocol_version(self) -> str | None:
        return self._conn.protocol_version if self._conn is not None else None

    def _set_state(self, state: State) -> None:
        self._state = state
        self._state_changed.set()
        self._state_changed = anyio.Event()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the session is ready; ``False`` if ``timeout`` passes first."""
        return await self.wait_state(State.READY, timeout=timeout)

    async def wait_state(self, *states: State, timeout: float) -> bool:
        """Wait until the supervisor is in one of ``states``; ``False`` if ``timeout`` passes first."""
        with anyio.move_on_after(timeout):
            while self._state not in states:
                if self._state is State.CLOSED:
                    return False
                await self._state_changed.wait()
        return self._state in states

    async def wait_attempt(self, timeout: float) -> bool:
        """Wait until ready or until a connect attempt ends in failure (bounded); ``ready``.

        Start-up uses this: a broken downstream should not hold the others up for the whole
        bound, and a failed first attempt is reason enough to report it not ready.
        """
        seen = self._attempts_finished
        with anyio.move_on_after(timeout):
            while not self.ready and self._attempts_finished == seen and self._state is not State.CLOSED:
                await self._state_changed.wait()
        return self.ready

    # -- supervisor --------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, stay connected, reconnect with backoff; until cancelled."""
        task_status.started()
        failures = 0
        try:
            while True:
                self._set_state(State.CONNECTING)
                connected = False
                try:
                    connected = await self._connect_and_serve()
                except Exception as exc:  # boundary: any connect/transport failure means "down, retry"
                    self.last_error = self._scrub(_describe(exc))
                    logger.warning("downstream %s: connection failed: %s", self.name, self.last_error)
                finally:
                    self._conn = None
                if connected:
                    failures = 0
                delay = min(self.backoff_max, self.backoff_initial * 2**failures)
                failures += 1
                self._retry_at = self._clock() + delay
                self._wake = anyio.Event()
                self._attempts_finished += 1
                self._set_state(State.DOWN)
                with anyio.move_on_after(delay):
                    await self._wake.wait()
        finally:
            self._closing = True
            self._conn = None
            self._set_state(State.CLOSED)

    async def _connect_and_serve(self) -> bool:
        """One connection's life: connect (bounded), publish, wait for its end. ``True`` if it got ready."""
        conn_box: list[_Connection] = []

        def on_end() -> None:
            if conn_box:
                conn_box[0].mark_lost()

        async def on_message(message: IncomingMessage) -> None:
            if conn_box and getattr(message, "method", None) in _LIST_CHANGED:
                conn_box[0].changed.set()

        client = Client(
            _WatchedTransport(self._transport(), on_end),
            mode="auto",
            cache=None,
            client_info=CLIENT_INFO,
            message_handler=on_message,
        )
        # One scope for the connection's whole life (its task groups must nest inside it); its
        # deadline bounds only the connect and is lifted once the session is ready.
        with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout) as scope:
            async with client:
                conn = _Connection(client.session, client.protocol_version, client.server_capabilities)
                conn_box.append(conn)
                await self._refresh_lists(conn)
                scope.deadline = math.inf
                self._conn = conn
                self.last_error = None
                self._attempts_finished += 1
                self._set_state(State.READY)
                logger.info(
                    "downstream %s: ready (protocol %s, %d tools)",
                    self.name,
                    conn.protocol_version,
                    len(self.tools),
                )
                while not conn.lost.is_set():
                    await conn.changed.wait()
                    conn.changed = anyio.Event()
                    if not conn.lost.is_set():
                        await self._refresh_lists(conn)
                self._conn = None
                logger.warning("downstream %s: connection lost", self.name)
                return True
        if scope.cancelled_caught:
            raise TimeoutError(f"connect timed out after {self.connect_timeout}s")
        return False  # pragma: no cover - the body always returns or raises

    def _transport(self) -> Transport:
        spec = self.spec
        if spec.transport == "stdio":
            if not spec.command:
                raise ValueError("stdio downstream without a command")
            return stdio_transport(  # type: ignore[return-value]
                spec.command, spec.args, env=spec.env, cwd=spec.cwd, errlog=self._errlog or sys.stderr
            )
        if not spec.url:
            raise ValueError("http downstream without a url")
        return http_transport(spec.url, spec.headers)  # type: ignore[return-value]

    async def _refresh_lists(self, conn: _Connection) -> None:
        """Fetch everything the server lists; raw dicts, the way the server sent them."""
        tools = await self._list_all(conn, "tools/list", "tools")
        self.tools = _absorb_tools(conn.session, tools)
        caps = conn.capabilities
        if caps.resources is not None:
            self.resources = await self._list_all(conn, "resources/list", "resources")
            templates = await self._list_all(conn, "resources/templates/list", "resourceTemplates")
            self.resource_templates = templates
        else:
            self.resources, self.resource_templates = [], []
        has_prompts = caps.prompts is not None
        self.prompts = await self._list_all(conn, "prompts/list", "prompts") if has_prompts else []

    async def _list_all(self, conn: _Connection, method: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        for _ in range(_LIST_PAGE_CAP):
            page = await conn.request(method, dict(params))
            items.extend(page.get(key) or [])
            cursor = page.get("nextCursor")
            if not cursor:
                break
            params = {"cursor": cursor}
        return items

    # -- calls -------------------------------------------------------------------------

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,
        on_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Forward one ``tools/call``; the raw ``CallToolResult`` dict, verbatim.

        ``headers`` ride on the HTTP POST of this one request (stdio ignores them).
        ``on_send`` is called right before the request is written: whatever fails before it
        (a cancellation while waiting for a reconnect) provably sent nothing.

        Raises:
            DownstreamUnavailable: not sent; nothing ran.
            DownstreamRejected: refused before executing (nothing ran).
            DownstreamLost: sent, no result (timeout, lost connection, error after sending).
        """
        conn = self._conn
        if conn is None or conn.lost.is_set():
            conn = await self._reconnect_inline()
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = dict(meta)  # the stamp adds to it; never touch the caller's dict
        return await self._send(conn, "tools/call", params, timeout=timeout, headers=headers, on_send=on_send)

    async def list_resources(self) -> list[dict[str, Any]]:
        """The resources listed at the last (re)connect or list_changed."""
        return list(self.resources)

    async def list_resource_templates(self) -> list[dict[str, Any]]:
        return list(self.resource_templates)

    async def list_prompts(self) -> list[dict[str, Any]]:
        return list(self.prompts)

    async def read_resource(self, uri: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The raw ``ReadResourceResult`` dict."""
        conn = self._conn if self._conn is not None and not self._conn.lost.is_set() else None
        conn = conn or await self._reconnect_inline()
        return await self._send(conn, "resources/read", {"uri": uri}, timeout=timeout or self.spec.timeout)

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The raw ``GetPromptResult`` dict."""
        conn = self._conn if self._conn is not None and not self._conn.lost.is_set() else None
        conn = conn or await self._reconnect_inline()
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        return await self._send(conn, "prompts/get", params, timeout=timeout or self.spec.timeout)

    async def _send(
        self,
        conn: _Connection,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Send on a live connection and map every failure to not sent / refused / unknown.

        The one place SDK and transport failures are translated (see ``errors.py``): only a
        request the transport could not deliver (``Wire.not_delivered``) or one the downstream
        refused before executing is "nothing ran"; everything else after sending is unknown.
        """
        wire = Wire()
        token = WIRE.set(wire)
        try:
            if on_send is not None:
                on_send()
            return _foreign(await conn.request(method, params, timeout=timeout, headers=headers))
        except MCPError as exc:
            raise self._translate(conn, exc, wire, timeout) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError) as exc:
            if wire.not_delivered:
                conn.mark_lost()
                raise self._unavailable() from exc
            # The write itself failed part-way: it may have reached the peer.
            raise DownstreamLost(f"{self.name}: transport failed mid-call", reason="connection_lost") from exc
        finally:
            WIRE.reset(token)

    def _translate(self, conn: _Connection, exc: MCPError, wire: Wire, timeout: float | None) -> Exception:
        code = exc.code
        if code == types.CONNECTION_CLOSED and wire.not_delivered:
            conn.mark_lost()  # the pipe is dead or the server refuses connections: reconnect
            return self._unavailable()
        if code == types.REQUEST_TIMEOUT:
            return DownstreamLost(f"{self.name}: no result within {timeout}s", reason="timeout")
        if code == types.CONNECTION_CLOSED:
            reason: LostReason = "cancelled" if self._closing else "connection_lost"
            return DownstreamLost(f"{self.name}: connection closed mid-call", reason=reason)
        message = self._scrub(f"{self.name}: {exc.error.message}")
        status = wire.http_status
        if status is not None and status >= 400:
            # The SDK reports every HTTP error status as -32603; the status tells them apart.
            if rejected_before_execution_status(status):
                return DownstreamRejected(message, code=code, data=exc.error.data, http_status=status)
            return DownstreamLost(f"{message} (HTTP {status})", reason="error_after_send", code=code)
        if code in BEFORE_EXECUTION_CODES:
            return DownstreamRejected(message, code=code, data=exc.error.data)
        # Any other error (-32603 internal error, a server-defined code) may come after the
        # tool acted: the outcome is unknown.
        return DownstreamLost(message, reason="error_after_send", code=code)

    def _unavailable(self) -> DownstreamUnavailable:
        detail = f": {self.last_error}" if self.last_error else ""
        return DownstreamUnavailable(
            f"The downstream server {self.name!r} is not reachable{detail}. Nothing was sent; "
            "retrying later with the same key is safe.",
            server=self.name,
        )

    async def _reconnect_inline(self) -> _Connection:
        """The session is down: try one bounded reconnect if one is due, else refuse at once.

        The connection must be opened by the supervisor task (its SDK task groups live
        there), so this wakes the supervisor early and waits a short while for it.
        """
        due = self._state is State.CONNECTING or (
            self._state is State.DOWN and self._clock() >= self._retry_at
        )
        if due and not self._closing:
            self._wake.set()
            await self.wait_attempt(self.inline_connect_timeout)
        conn = self._conn
        if conn is None or conn.lost.is_set():
            raise self._unavailable()
        return conn

    def _scrub(self, text: str) -> str:
        """Error text may quote the command line or a URL: never let a secret through."""
        for secret in self.spec.secrets:
            text = text.replace(secret, "***")
        return text


def _foreign(result: dict[str, Any]) -> dict[str, Any]:
    """A downstream's result as the gateway may pass it on: without the downstream's own server
    identity stamp (the client talks to the gateway) and without any key in the gateway's
    ``_meta`` namespace (a downstream cannot forge the gateway's words, such as its outcome)."""
    found = result.get("_meta")
    if isinstance(found, dict) and (
        types.SERVER_INFO_META_KEY in found or any(k.startswith(meta.PREFIX) for k in found)
    ):
        result = dict(result)
        result["_meta"] = {k: v for k, v in meta.strip_ours(found).items() if k != types.SERVER_INFO_META_KEY}
    return result


def _absorb_tools(session: ClientSession, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Let the SDK learn the listing (``x-mcp-header`` → ``Mcp-Param-*`` headers on 2026-07-28).

    The SDK drops tools whose ``x-mcp-header`` annotations are invalid (a spec MUST); the raw
    dicts of the tools it kept are returned. A listing the SDK cannot model is kept whole.
    """
    try:
        listing = types.ListToolsResult.model_validate({"tools": tools}, by_name=False)
        kept = session._absorb_tool_listing(listing, complete=True)
    except Exception:  # boundary: a malformed listing still forwards; it just gets no header mirroring
        logger.warning("tool listing could not be modelled; forwarding it as is", exc_info=True)
        return tools
    names = {tool.name for tool in kept.tools}
    return [tool for tool in tools if tool.get("name") in names]


def _describe(exc: BaseException) -> str:
    """A one-line reason, looking through the exception groups task groups wrap errors in."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
