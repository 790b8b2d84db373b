"""One long-lived MCP client session per downstream server, kept alive by a supervisor task.

The supervisor (``run``) owns the connection: it connects, lists what the server offers,
waits for the connection to die, and reconnects with backoff. Callers never own SDK
context managers; they borrow the live connection for one request. Results travel as raw
dicts: the gateway forwards them verbatim, so nothing is re-modelled or re-validated on the
hot path (``tools/call`` goes straight to the SDK dispatcher).

Protocol revision: ``mcp.Client(mode="auto")`` probes ``server/discover`` (2026-07-28) and
falls back to the ``initialize`` handshake (2025-era servers), so each downstream speaks the
newest revision it supports.

Relaying: the gateway's client declares what a client can be asked (sampling, elicitation in
form and URL mode, roots), so a server offers through the gateway what it offers directly.
Each request is made for an upstream ``Caller`` (``gateway/downstream/relay.py``): what the
server asks while it runs goes to that caller, answered the way its client would (a client
that lacks the capability gets "method not found"); its log messages and progress go back to
it; on 2026-07-28 its capabilities and log level ride the request, and an ``input_required``
result is resolved through it when its own client cannot take one (2025-era clients).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TextIO

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client
from mcp.client import Transport
from mcp.client.session import ClientRequestContext, ClientSession, IncomingMessage
from mcp.client.subscriptions import ListenNotSupportedError, ResourceUpdated, SubscriptionLost, listen
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter

from gateway import __version__, _sdk, meta
from gateway.downstream import relay, tasks
from gateway.downstream.errors import (
    BEFORE_EXECUTION_CODES,
    DownstreamLost,
    DownstreamRejected,
    DownstreamUnavailable,
    LostReason,
    rejected_before_execution_status,
)
from gateway.downstream.relay import Caller, current_caller
from gateway.downstream.transport import WIRE, Reach, Wire, http_transport, stdio_transport
from gateway.manifests.models import ServerSpec

logger = logging.getLogger(__name__)

CLIENT_INFO: Final = types.Implementation(name="idem-gateway", version=__version__)
_LIST_PAGE_CAP: Final = 100  # a paginator that never ends cannot hang a (re)connect
_LIST_CHANGED: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
    }
)
# Everything a client can be asked: a server hides what needs a capability its client lacks.
SAMPLING_CAPABILITY: Final = types.SamplingCapability(
    context=types.SamplingContextCapability(), tools=types.SamplingToolsCapability()
)
MAX_INPUT_ROUNDS: Final = 10  # input_required rounds resolved for a 2025-era client, as the SDK client
_SAMPLING_RESULT: Final = TypeAdapter(types.CreateMessageResult | types.CreateMessageResultWithTools)
_ELICIT_RESULT: Final = TypeAdapter(types.ElicitResult)
_ROOTS_RESULT: Final = TypeAdapter(types.ListRootsResult)

Clock = Callable[[], float]
Notify = Callable[["DownstreamSession", str, dict[str, Any]], Awaitable[None]]
"""Where a notification that belongs to no request goes (log messages, resources/updated,
list_changed): the gateway fans it out to the upstream clients this session serves."""


async def _ignore(session: DownstreamSession, method: str, params: dict[str, Any]) -> None:
    return None


def is_input_required(result: Mapping[str, Any]) -> bool:
    return result.get("resultType") == "input_required"


def own_meta(result: dict[str, Any]) -> dict[str, Any]:
    """A downstream result as the gateway forwards it: the downstream's ``_meta`` passes, except
    its serverInfo stamp (the client talks to the gateway) and keys under ``idem-gateway/``,
    which only the gateway writes."""
    found = result.get("_meta")
    if not isinstance(found, dict):
        return result
    kept = {k: v for k, v in meta.strip_ours(found).items() if k != types.SERVER_INFO_META_KEY}
    if len(kept) == len(found):
        return result
    result = dict(result)
    if kept:
        result["_meta"] = kept
    else:
        del result["_meta"]
    return result


class State(enum.Enum):
    """Where the supervisor is; ``READY`` is the only state in which calls are sent."""

    CONNECTING = "connecting"
    READY = "ready"
    DOWN = "down"  # waiting out the backoff before the next attempt
    CLOSED = "closed"


class _WatchedReadStream(anyio.abc.ObjectReceiveStream[Any]):
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

    async def aclose(self) -> None:
        self._on_end()
        await self._inner.aclose()


class _WatchedTransport:
    """Wraps an SDK transport so the end of its read stream is observable."""

    def __init__(self, inner: Transport, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    async def __aenter__(self) -> tuple[Any, Any]:
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
    max_timeout: float = math.inf
    lost: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)  # lists changed, or lost
    callers: list[Caller] = field(default_factory=list)  # upstream requests in flight, oldest first

    def mark_lost(self) -> None:
        self.lost.set()
        self.changed.set()

    @property
    def modern(self) -> bool:
        return self.protocol_version in MODERN_PROTOCOL_VERSIONS

    @contextmanager
    def attach(self, caller: Caller | None) -> Iterator[None]:
        """While a request made for ``caller`` is in flight, what the server sends goes to it."""
        if caller is None:
            yield
            return
        self.callers.append(caller)
        try:
            yield
        finally:
            self.callers.remove(caller)

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one request for the current caller (``relay.calling_for``) and return the raw result.

        Bypasses ``ClientSession.send_request`` on purpose: it has no per-call headers and
        it validates every result against the revision's model, which a pass-through does
        not need. What it does first, the revision stamp (``_meta`` protocol fields on
        2026-07-28, the ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name`` headers), is
        kept by calling the session's own stamp.

        The caller's ``_meta`` and extra params ride along (the gateway's own keys win); on
        2026-07-28 its capabilities and log level replace the gateway's in the envelope.
        ``timeout`` is how long the server may go without a word: each progress notification
        restarts it, up to ``max_timeout`` from the start, the way the SDK client's
        reset-on-progress does.
        """
        caller = current_caller()
        opts: CallOptions = {"headers": dict(headers)} if headers else {}
        if caller is not None:
            params = {**caller.params, **params}
            if caller.meta:
                params["_meta"] = {**caller.meta, **(params.get("_meta") or {})}
        data: dict[str, Any] = {"method": method, "params": params}
        _sdk.stamp(self.session, data, opts)  # the SDK's per-revision stamp; headers set here win
        if caller is not None and self.modern:
            envelope = data["params"]["_meta"]
            envelope[types.CLIENT_CAPABILITIES_META_KEY] = relay.relayable(caller.capabilities).model_dump(
                by_alias=True, mode="json", exclude_none=True
            )
            if caller.log_level is not None:
                envelope[types.LOG_LEVEL_META_KEY] = caller.log_level
            else:
                envelope.pop(types.LOG_LEVEL_META_KEY, None)
        dispatcher = _sdk.dispatcher(self.session)
        with self.attach(caller):
            if timeout is None:
                if caller is not None and caller.wants_progress:
                    opts["on_progress"] = caller.progress
                return await dispatcher.send_raw_request(method, data["params"], opts)
            started = anyio.current_time()
            limit = started + max(timeout, self.max_timeout)
            with anyio.CancelScope(deadline=min(limit, started + timeout)) as scope:

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    scope.deadline = min(limit, anyio.current_time() + timeout)
                    if caller is not None:
                        await caller.progress(progress, total, message)

                opts["on_progress"] = on_progress
                return await dispatcher.send_raw_request(method, data["params"], opts)
            raise MCPError(code=types.REQUEST_TIMEOUT, message=f"Request {method!r} timed out")


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
        self._spoken: str | None = None  # the revision of the last connection that got ready
        self._retry_at = -math.inf
        # Kept across reconnects: whether the transports are seen to get each request's wire is
        # a property of the code path, learnt once.
        self._reach = Reach()
        self._wake = anyio.Event()
        self._closing = False
        self.last_error: str | None = None
        self.tools: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.resource_templates: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []
        self.instructions: str | None = None
        self.capabilities = types.ServerCapabilities()
        self.principal: str | None = None  # whose session this is; None: shared by every principal
        self.notify_upstream: Notify = _ignore  # set by the gateway
        self.roots_fallback: Callable[[], Awaitable[dict[str, Any] | None]] | None = None
        self._watched: dict[str, int] = {}  # resource → upstream subscribers
        self._watch_changed = anyio.Event()

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
        relay.forget_caller()  # started from a handler, this task would inherit its caller
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
            if conn_box and isinstance(message, types.Notification):
                await self._on_notification(conn_box[0], message)

        async def on_sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
            answer = await self._relay(conn_box, relay.SAMPLING, _dump(params))
            return answer if isinstance(answer, types.ErrorData) else _SAMPLING_RESULT.validate_python(answer)

        async def on_elicitation(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult | types.ErrorData:
            answer = await self._relay(conn_box, relay.ELICITATION, _dump(params))
            return answer if isinstance(answer, types.ErrorData) else _ELICIT_RESULT.validate_python(answer)

        async def on_roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
            answer = await self._relay(conn_box, relay.ROOTS, {})
            return answer if isinstance(answer, types.ErrorData) else _ROOTS_RESULT.validate_python(answer)

        client = Client(
            _WatchedTransport(self._transport(), on_end),
            mode="auto",
            cache=None,
            client_info=CLIENT_INFO,
            message_handler=on_message,
            sampling_callback=on_sampling,
            sampling_capabilities=SAMPLING_CAPABILITY,
            elicitation_callback=on_elicitation,
            list_roots_callback=on_roots,
        )
        # One scope for the connection's whole life (its task groups must nest inside it); its
        # deadline bounds only the connect and is lifted once the session is ready.
        with anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout) as scope:
            async with client:
                conn = _Connection(
                    client.session,
                    client.protocol_version,
                    client.server_capabilities,
                    max_timeout=self.spec.max_timeout,
                )
                conn_box.append(conn)
                self.capabilities = conn.capabilities
                self.instructions = client.instructions
                await self._refresh_lists(conn)
                scope.deadline = math.inf
                self._conn = conn
                self._spoken = conn.protocol_version
                self.last_error = None
                self._attempts_finished += 1
                self._set_state(State.READY)
                logger.info(
                    "downstream %s: ready (protocol %s, %d tools)",
                    self.name,
                    conn.protocol_version,
                    len(self.tools),
                )
                async with anyio.create_task_group() as watchers:
                    if conn.modern:
                        watchers.start_soon(self._listen, conn)
                    else:
                        watchers.start_soon(self._resubscribe, conn)
                    while not conn.lost.is_set():
                        await conn.changed.wait()
                        conn.changed = anyio.Event()
                        if not conn.lost.is_set():
                            before = (self.tools, self.resources, self.resource_templates, self.prompts)
                            await self._refresh_lists(conn)
                            await self._tell_lists_changed(before)
                    watchers.cancel_scope.cancel()
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
            self._reach.carried = True  # its writes run in the caller's own task, wire and all
            return stdio_transport(  # type: ignore[return-value]
                spec.command, spec.args, env=spec.env, cwd=spec.cwd, errlog=self._errlog or sys.stderr
            )
        if not spec.url:
            raise ValueError("http downstream without a url")
        return http_transport(spec.url, spec.headers, self._reach)  # type: ignore[return-value]

    async def _listen(self, conn: _Connection) -> None:
        """2026-07-28: changes arrive only on a ``subscriptions/listen`` stream the client opens.

        One stream per connection, for the lists the server says change and the resources
        upstream clients subscribe to; re-opened when that set of resources changes.
        """
        caps = conn.capabilities
        tools = bool(caps.tools and caps.tools.list_changed)
        prompts = bool(caps.prompts and caps.prompts.list_changed)
        resources = bool(caps.resources and caps.resources.list_changed)
        while not conn.lost.is_set():
            uris = sorted(self._watched)
            reopen = self._watch_changed
            if not (tools or prompts or resources or uris):
                await reopen.wait()
                continue
            try:
                async with (
                    listen(
                        conn.session,
                        tools_list_changed=tools,
                        prompts_list_changed=prompts,
                        resources_list_changed=resources,
                        resource_subscriptions=uris,
                    ) as stream,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(_cancel_on, reopen, tg.cancel_scope)
                    async for event in stream:
                        if isinstance(event, ResourceUpdated):
                            uri = {"uri": event.uri}
                            await self.notify_upstream(self, "notifications/resources/updated", uri)
                        else:
                            conn.changed.set()
                    tg.cancel_scope.cancel()
            except (MCPError, SubscriptionLost, ListenNotSupportedError, TimeoutError) as exc:
                logger.info("downstream %s: subscriptions/listen ended: %s", self.name, exc)
                if isinstance(exc, MCPError) and exc.code == types.METHOD_NOT_FOUND:
                    return  # the server has no listen; its lists are fetched when asked
                await reopen.wait()  # a new subscription tries again; a reconnect starts afresh

    async def watch_resource(self, uri: str, delta: int) -> None:
        """An upstream client subscribes to (+1) or leaves (-1) ``uri``; the server hears of the
        first and the last: ``resources/subscribe`` (2025 era) or the listen stream (2026-07-28)."""
        count = self._watched.get(uri, 0)
        if count + delta > 0:
            self._watched[uri] = count + delta
        else:
            self._watched.pop(uri, None)
        if (count == 0) == (count + delta <= 0):
            return  # not the first nor the last
        if self.modern:
            self._watch_changed.set()
            self._watch_changed = anyio.Event()
            return
        resources = self.capabilities.resources
        if resources is not None and resources.subscribe:
            method = "resources/subscribe" if delta > 0 else "resources/unsubscribe"
            await self.request(method, {"uri": uri}, timeout=self.spec.timeout)

    async def _resubscribe(self, conn: _Connection) -> None:
        """After a reconnect the server has forgotten the subscriptions (2025 era)."""
        resources = conn.capabilities.resources
        if conn.modern or resources is None or not resources.subscribe:
            return
        for uri in list(self._watched):
            try:
                await conn.request("resources/subscribe", {"uri": uri}, timeout=self.spec.timeout)
            except MCPError as exc:
                logger.info("downstream %s: re-subscribing to a resource failed: %s", self.name, exc)

    async def _on_notification(self, conn: _Connection, message: types.Notification[Any, Any]) -> None:
        """A notification from the server: to the request it is about, or to the gateway's fan-out."""
        method = message.method
        params = _dump(message.params) if isinstance(message.params, BaseModel) else {}
        if method in _LIST_CHANGED:
            conn.changed.set()  # the supervisor re-lists, then tells the gateway
            return
        if method == "notifications/message":
            caller = relay.pick(conn.callers)
            if caller is not None:
                await caller.log(params)
                return
        elif method == "notifications/elicitation/complete":
            caller = relay.pick(conn.callers)
            if caller is not None and caller.channel is not None:
                await caller.channel.notify(method, params)
                return
        elif method not in ("notifications/resources/updated",):
            return  # progress is routed by the dispatcher; cancellations are its own
        await self.notify_upstream(self, method, params)

    async def _relay(
        self, conn_box: list[_Connection], method: str, params: dict[str, Any]
    ) -> dict[str, Any] | types.ErrorData:
        """A server→client request: asked of the caller it belongs to, answered as its client would."""
        caller = relay.pick(conn_box[0].callers) if conn_box else None
        try:
            if caller is None:
                if method == relay.ROOTS and self.roots_fallback is not None:
                    roots = await self.roots_fallback()
                    if roots is not None:
                        return roots
                raise relay.unsupported(method)
            return await caller.ask(method, params)
        except MCPError as exc:
            return exc.error

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

    async def _tell_lists_changed(self, before: tuple[list[dict[str, Any]], ...]) -> None:
        tools, resources, templates, prompts = before
        if tools != self.tools:
            await self.notify_upstream(self, "notifications/tools/list_changed", {})
        if resources != self.resources or templates != self.resource_templates:
            await self.notify_upstream(self, "notifications/resources/list_changed", {})
        if prompts != self.prompts:
            await self.notify_upstream(self, "notifications/prompts/list_changed", {})

    async def list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        """A list asked now (every page, capped), not the one cached at the last change."""
        conn = self._conn if self._conn is not None and not self._conn.lost.is_set() else None
        conn = conn or await self._reconnect_inline()
        try:
            with anyio.fail_after(self.spec.timeout):
                items = await self._list_all(conn, method, key)
        except (MCPError, TimeoutError) as exc:
            raise DownstreamLost(
                self._scrub(f"{self.name}: {method}: {exc}"), reason="error_after_send"
            ) from exc
        if method == "resources/list":
            self.resources = items
        elif method == "resources/templates/list":
            self.resource_templates = items
        elif method == "prompts/list":
            self.prompts = items
        return items

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
        """Forward one ``tools/call`` for the current caller; the raw ``CallToolResult`` dict.

        ``headers`` ride on the HTTP POST of this one request (stdio ignores them).
        ``on_send`` is called right before the request is written: whatever fails before it
        (a cancellation while waiting for a reconnect) provably sent nothing.

        Raises:
            DownstreamUnavailable: not sent; nothing ran.
            DownstreamRejected: refused before executing (nothing ran).
            DownstreamLost: sent, no result (timeout, lost connection, error after sending).
        """
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = dict(meta)  # the stamp adds to it; never touch the caller's dict
        return await self.request("tools/call", params, timeout=timeout, headers=headers, on_send=on_send)

    async def list_resources(self) -> list[dict[str, Any]]:
        """The resources listed at the last (re)connect or list_changed."""
        return list(self.resources)

    async def list_resource_templates(self) -> list[dict[str, Any]]:
        return list(self.resource_templates)

    async def list_prompts(self) -> list[dict[str, Any]]:
        return list(self.prompts)

    async def read_resource(self, uri: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The raw ``ReadResourceResult`` dict."""
        return await self.request("resources/read", {"uri": uri}, timeout=timeout or self.spec.timeout)

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The raw ``GetPromptResult`` dict."""
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        return await self.request("prompts/get", params, timeout=timeout or self.spec.timeout)

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Any request, for the current caller; the raw result, with the gateway's ``_meta`` rules.

        An ``input_required`` result (2026-07-28) goes back as it is to a caller whose client
        takes one; for any other caller the gateway asks its client each embedded request and
        retries with the answers (``inputResponses``/``requestState``), as the SDK client does.
        ``on_send`` is called right before the first request is written.
        """
        conn = self._conn if self._conn is not None and not self._conn.lost.is_set() else None
        conn = conn or await self._reconnect_inline()
        sent = await self._send(conn, method, params, timeout=timeout, headers=headers, on_send=on_send)
        result = self._shaped(method, sent)
        caller = current_caller()
        rounds = 0
        while is_input_required(result) and (caller is None or not caller.takes_input_required):
            rounds += 1
            if rounds > MAX_INPUT_ROUNDS:
                message = f"{self.name}: still asking for input after {MAX_INPUT_ROUNDS} rounds"
                raise DownstreamLost(message, reason="error_after_send")
            answers = await self._answer_input_requests(caller, result.get("inputRequests") or {})
            retry = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
            if answers:
                retry["inputResponses"] = answers
            if result.get("requestState") is not None:
                retry["requestState"] = result["requestState"]
            result = self._shaped(
                method, await self._send(conn, method, retry, timeout=timeout, headers=headers)
            )
        return result

    def _shaped(self, method: str, result: dict[str, Any]) -> dict[str, Any]:
        """Task ids made the gateway's (``<server>/<id>``); ``_send`` applied the ``_meta`` rules."""
        return result if method == "tasks/result" else tasks.expose(self.name, result)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """A notification to the server (``notifications/roots/list_changed``); dropped while down."""
        conn = self._conn
        if conn is None or conn.lost.is_set():
            return
        opts: CallOptions = {}
        data: dict[str, Any] = {"method": method, "params": dict(params or {})}
        _sdk.stamp(conn.session, data, opts)
        try:
            await _sdk.dispatcher(conn.session).notify(method, data["params"] or None, opts)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    @property
    def modern(self) -> bool:
        """Whether the live session speaks 2026-07-28 (no server→client requests, per-request envelope)."""
        conn = self._conn
        return conn is not None and conn.modern

    async def speaks_modern(self) -> bool:
        """``modern``, for choosing a call's path before the call: a lost connection answers with
        the revision it spoke, and only a session that never connected (a new principal's) tries
        to connect first. ``False`` when it cannot connect (the call will say so).

        A reconnect is waited for inside the call, after its key is claimed, never here: a
        wait before the claim would hold a keyed call where nothing records it (a client that
        gives up there leaves no trace, and the wait is not bounded by the call's timeout).
        """
        conn = self._conn
        if conn is not None and not conn.lost.is_set():
            return conn.modern
        if self._spoken is None:
            with contextlib.suppress(DownstreamUnavailable):
                await self._reconnect_inline()
            return self.modern
        return self._spoken in MODERN_PROTOCOL_VERSIONS

    async def _answer_input_requests(
        self, caller: Caller | None, requests: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Ask the caller's client every embedded input request, concurrently."""
        answers: dict[str, dict[str, Any]] = {}
        failed: list[MCPError] = []

        async def ask(key: str, request: Mapping[str, Any]) -> None:
            try:
                if caller is None:
                    raise relay.unsupported(str(request.get("method")))
                answers[key] = await caller.ask(str(request.get("method")), dict(request.get("params") or {}))
            except MCPError as exc:
                failed.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for key, request in requests.items():
                if isinstance(request, Mapping):
                    tg.start_soon(ask, key, request)
        if failed:
            error = failed[0]
            message = f"{self.name}: the client could not answer what the server asked: {error.error.message}"
            raise DownstreamLost(self._scrub(message), reason="error_after_send", code=error.code)
        return answers

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
        request the transport could not deliver (``Wire.undelivered``) or one the downstream
        refused before executing is "nothing ran"; everything else after sending is unknown.
        """
        wire = Wire(tracked=self._reach.carried)
        token = WIRE.set(wire)
        try:
            if on_send is not None:
                on_send()
            return own_meta(await conn.request(method, params, timeout=timeout, headers=headers))
        except MCPError as exc:
            raise self._translate(conn, exc, wire, timeout) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError) as exc:
            if wire.undelivered():
                conn.mark_lost()
                raise self._unavailable() from exc
            # The write itself failed part-way: it may have reached the peer.
            raise DownstreamLost(f"{self.name}: transport failed mid-call", reason="connection_lost") from exc
        finally:
            WIRE.reset(token)

    def _translate(self, conn: _Connection, exc: MCPError, wire: Wire, timeout: float | None) -> Exception:
        code = exc.code
        if code == types.CONNECTION_CLOSED and wire.undelivered():
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
            # A session's first connect (one started for a new principal) is worth waiting for.
            first = self._attempts_finished == 0
            await self.wait_attempt(self.connect_timeout if first else self.inline_connect_timeout)
        conn = self._conn
        if conn is None or conn.lost.is_set():
            raise self._unavailable()
        return conn

    def _scrub(self, text: str) -> str:
        """Error text may quote the command line or a URL: never let a secret through."""
        for secret in self.spec.secrets:
            text = text.replace(secret, "***")
        return text


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True) if model is not None else {}


def _absorb_tools(session: ClientSession, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Let the SDK learn the listing (``x-mcp-header`` → ``Mcp-Param-*`` headers on 2026-07-28).

    The SDK drops tools whose ``x-mcp-header`` annotations are invalid (a spec MUST); the raw
    dicts of the tools it kept are returned. A listing the SDK cannot model is kept whole.
    """
    try:
        listing = types.ListToolsResult.model_validate({"tools": tools}, by_name=False)
        kept = _sdk.absorb_tool_listing(session, listing)
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
