"""The gateway's MCP face: the low-level ``Server`` whose handlers come from manifests.

``Gateway`` owns the long-lived parts (store, downstream pool, guard, background lease renewal
and sweeping, open multi-round exchanges) under one task group; ``Gateway.server()`` builds the
handlers that every transport (stdio, streamable HTTP) serves.

Apart from the key, the gateway means to be invisible: every request is made downstream for
its upstream ``Caller`` (``gateway/server/upstream.py``), so what the server asks, logs or
reports while it runs reaches that client and no other; results are shaped for the client's
protocol revision; prompts and resources of several servers share one namespace
(``gateway/server/names.py``); and each principal has its own downstream sessions
(``gateway/downstream/pool.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict

from gateway import __version__
from gateway.downstream import DownstreamError, DownstreamPool, DownstreamSession, tasks
from gateway.downstream.relay import Caller, calling_for
from gateway.errors import DownstreamUnavailable, StoreUnavailable
from gateway.idempotency.fingerprint import Fingerprinter
from gateway.idempotency.guard import Guard
from gateway.idempotency.replays import ReplayCache
from gateway.manifests.models import ServerSpec
from gateway.secret import SecretError, check_value
from gateway.server import approval, metrics, names, upstream
from gateway.server.call_tool import CallPath, Downstream
from gateway.server.catalog import Catalog
from gateway.server.exchange import AlreadyDelivered, Exchanges
from gateway.server.limits import Limits, RateLimiter, check_uri
from gateway.server.results import as_mcp_error, for_client, unknown_tool
from gateway.server.upstreams import Upstreams
from gateway.store.base import Store
from gateway.store.deferred import DeferredEvents
from gateway.store.records import Event

logger = logging.getLogger(__name__)

PRINCIPAL_SCOPE_KEY = "idem_gateway.principal"
INSTRUCTIONS = (
    "idem-gateway proxies tools and makes retries safe. Side-effecting tools need an "
    "idempotency_key: one new key per intended action, the same key for every retry of it, "
    "never one key for two actions. After outcome_unknown, read audit://keys/{key} instead of "
    "minting a new key."
)
LIST_PAGE_CAP: Final = 100
NOT_FOUND: Final = (types.INVALID_PARAMS, -32002)  # "resource not found" (-32002) and invalid params


class ResourceProvider(Protocol):
    """Resources the gateway serves itself (the audit trail), next to the downstreams' own."""

    def resources(self) -> list[dict[str, Any]]: ...

    def templates(self) -> list[dict[str, Any]]: ...

    def handles(self, uri: str) -> bool: ...

    async def read(self, principal: str, uri: str) -> dict[str, Any]: ...


class Publisher(Protocol):
    """Tells subscribers of a principal about a change (``gateway.audit.subscriptions``)."""

    async def publish(self, principal: str | None, event: Any) -> None: ...


class TaskParams(types.RequestParams):
    """``tasks/*`` params (types the SDK does not dispatch): whatever the client sent."""

    model_config = ConfigDict(extra="allow")


class _Server(Server[Any]):
    """The low-level server, advertising ``listChanged`` for what the gateway relays, and tasks
    when a downstream offers them (``gateway/downstream/tasks.py``)."""

    tasks: types.ServerTasksCapability | None = None  # 2025-11-25
    tasks_extension: bool = False  # 2026-07-28

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        caps = super().get_capabilities(
            notification_options, experimental_capabilities, extensions, protocol_version=protocol_version
        )
        if protocol_version in MODERN_PROTOCOL_VERSIONS:
            if self.tasks_extension:
                caps.extensions = {**(caps.extensions or {}), tasks.EXTENSION: {}}
        elif self.tasks is not None:
            caps.tasks = self.tasks
        return caps

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        changed = notification_options or NotificationOptions(True, True, True)
        return super().create_initialization_options(changed, experimental_capabilities, extensions)


class Gateway:
    """Store + downstreams + guard, and the MCP handlers over them."""

    def __init__(
        self,
        specs: Sequence[ServerSpec],
        store: Store,
        *,
        principal: str = "local",
        lease_ttl: float = 10.0,
        sweep_interval: float = 60.0,
        replay_cache: float = 60.0,
        start_timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        secret: bytes | None = None,
        connect_wait: float = 2.0,
        limits: Limits | None = None,
    ) -> None:
        self.specs = list(specs)
        self.limits = limits or Limits()  # security hook: gateway.server.limits
        self.rate_limiter = RateLimiter(self.limits.rate)
        self.store = DeferredEvents(store)  # a replay's audit line is written after its answer
        self.principal = principal
        self.sweep_interval = sweep_interval
        self.start_timeout = start_timeout
        self.connect_wait = connect_wait
        self.clock = clock or store.now  # the store's time: the database's on a shared server
        replays = ReplayCache(ttl=replay_cache) if replay_cache > 0 else None
        self.guard = Guard(
            self.store, clock=self.clock, lease_ttl=lease_ttl, replays=replays, audit_later=self.store.defer
        )
        self.approvals = approval.Approvals(self.store, self.clock)
        # Fingerprints are keyed by the store's secret (a random one when none is given: a
        # gateway alone on its store, as in tests).
        secret = secret if secret is not None else os.urandom(32)
        self.fingerprint = Fingerprinter(secret)
        self._secret_check = check_value(secret)
        self.calls = CallPath(self.guard, self.record, self.fingerprint, self.approvals, self.rate_limiter)
        self.metrics = metrics.CallMetrics()  # served at /metrics over HTTP
        self.pool: DownstreamPool | None = None
        self.catalog: Catalog | None = None
        self.exchanges: Exchanges | None = None
        self.upstreams = Upstreams()
        self.providers: list[ResourceProvider] = []
        self.prompts: dict[str, tuple[dict[str, Any], Callable[[dict[str, str]], dict[str, Any]]]] = {}
        # resources/subscribe, resources/unsubscribe, subscriptions/listen (gateway.audit installs them).
        self.subscription_handlers: dict[str, Any] = {}
        # Hooks for optional instrumentation (gateway.tracing): request middleware, and the
        # downstream a call is sent through (by server name and principal).
        self.middleware: list[Any] = []
        self.downstream: Callable[[str, str | None], Downstream] = self.session
        self.subscriptions: Publisher | None = None
        self.secrets = tuple(secret for spec in self.specs for secret in spec.secrets)
        self._store_open = False
        self._fatal: SecretError | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Open the store, start every downstream, renew leases and sweep until exit."""
        try:
            await self._open_store()
        except StoreUnavailable as exc:
            # Fail closed, but stay up: read-only tools still work, keyed calls are refused
            # with store_unavailable, and the sweeper keeps trying to open the store.
            logger.error("store unavailable at start-up: %s", exc)
        try:
            pool = DownstreamPool(
                self.specs,
                startup_timeout=self.start_timeout,
                connect_wait=self.connect_wait,
                principal=self.principal,
                on_session=self._wire,
            )
            async with pool:
                self.pool = pool
                self.catalog = Catalog({name: (s.spec, s) for name, s in pool.sessions.items()})
                for server, lacking in self.catalog.missing().items():
                    source = pool.sessions[server].spec.source.name
                    for name in lacking:
                        logger.warning("%s: tools.%s: the downstream does not offer this tool", source, name)
                async with anyio.create_task_group() as tg:
                    self.exchanges = Exchanges(tg)
                    await tg.start(self.guard.serve)
                    await tg.start(self.store.serve)
                    tg.start_soon(self._sweep, tg.cancel_scope)
                    try:
                        yield self
                    finally:
                        tg.cancel_scope.cancel()
                if self._fatal is not None:
                    raise self._fatal
        finally:
            with anyio.CancelScope(shield=True):
                await self.store.close()

    async def _open_store(self) -> None:
        """Open the store and check it was made with this gateway's secret (else: SecretError,
        a configuration error that stops the gateway: its fingerprints would match nothing)."""
        await self.store.open()
        if not await self.store.bind_secret(self._secret_check):
            raise SecretError(
                "this store's fingerprints were made with another secret: every gateway on one "
                "store needs the same secret file (--secret-file, IDEM_GATEWAY_SECRET_FILE)"
            )
        self._store_open = True

    async def _sweep(self, scope: anyio.CancelScope) -> None:
        while True:
            try:
                if not self._store_open:
                    await self._open_store()
                    logger.info("store is reachable again")
                deleted = await self.store.purge(self.clock())
                if deleted:
                    logger.info("swept %d expired records", deleted)
                if self.limits.audit_retention is not None:  # security hook: audit retention
                    before = self.clock() - timedelta(seconds=self.limits.audit_retention)
                    if dropped := await self.store.purge_events(before):
                        logger.info("dropped %d audit events older than the audit retention", dropped)
            except StoreUnavailable as exc:  # the sweeper must outlive a store outage
                logger.error("sweep failed: %s", exc)
            except SecretError as exc:  # a configuration error: stop serving rather than guess
                self._fatal = exc
                scope.cancel()
                return
            await anyio.sleep(self.sweep_interval)

    def _wire(self, session: DownstreamSession) -> None:
        """Every downstream session, as the pool makes it: where its unrelated messages go."""
        session.notify_upstream = self._from_downstream

        async def roots() -> dict[str, Any] | None:
            return await self.upstreams.roots(session.principal)

        session.roots_fallback = roots

    def session(self, server: str, principal: str | None = None) -> DownstreamSession:
        assert self.pool is not None
        return self.pool.session(server, principal or self.principal)

    def principal_of(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The caller: set by the HTTP auth middleware in the ASGI scope; over stdio, --principal."""
        scope = getattr(ctx.request, "scope", None)
        if isinstance(scope, dict):
            principal = scope.get(PRINCIPAL_SCOPE_KEY)
            if isinstance(principal, str):
                return principal
        return self.principal

    def _principal(self, ctx: ServerRequestContext[Any, Any]) -> str:
        principal = self.principal_of(ctx)
        self.upstreams.see(ctx, principal)
        return principal

    async def record(self, event: Event) -> None:
        await self.store.append_event(event)

    # ---- serving one request for its caller --------------------------------------------------

    async def _serve(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Caller,
        session: DownstreamSession | None,
        work: Callable[[], Awaitable[dict[str, Any]]],
        *,
        identity: tuple[Any, ...] | None = None,
        asks: bool = False,
    ) -> dict[str, Any]:
        """Run ``work`` (which talks to ``session``) for ``caller``.

        A 2026-07-28 client whose downstream speaks a 2025-era revision gets the call through
        an exchange (``gateway/server/exchange.py``): what the server asks mid-call becomes an
        ``input_required`` round. So does a call the gateway itself may ask about (``asks``: a
        person's approval), whatever the downstream speaks. A retry carrying the exchange's
        ``requestState`` is a round of it.
        """
        if caller.takes_input_required and self.exchanges is not None:
            state = caller.params.get("requestState")
            channel = upstream.RequestChannel(ctx, requests=False)
            if Exchanges.owns(state):
                assert isinstance(state, str)
                exchange = self.exchanges.resume(state, caller.principal)
                exchange.answer(caller.params.get("inputResponses"))
                try:
                    return await exchange.round(channel)
                except AlreadyDelivered:
                    # Another round took the result (a re-attached retry answered the same
                    # question): this one is served as a retry of the call, without our rounds' state.
                    caller.params = {
                        k: v for k, v in caller.params.items() if k not in ("requestState", "inputResponses")
                    }
            if session is not None and (asks or not await session.speaks_modern()):

                async def for_caller() -> dict[str, Any]:
                    try:
                        with calling_for(caller):
                            return await work()
                    finally:
                        caller.close()

                opened = self.exchanges.reattach(caller.principal, identity)
                if opened is not None:
                    try:
                        return await opened.round(channel)
                    except AlreadyDelivered:
                        pass  # the call ended and its result went to another round: the guard replays it
                else:
                    return await self.exchanges.start(caller, for_caller, identity=identity).round(channel)
        try:
            with calling_for(caller):
                return await work()
        finally:
            caller.close()  # what the server still asks for this request is abandoned

    # ---- tools -------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        assert self.catalog is not None
        self._principal(ctx)
        return for_client(ctx, {"tools": [t.listed for t in self.catalog.all()]})

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> dict[str, Any]:
        assert self.catalog is not None
        principal = self._principal(ctx)
        tool = self.catalog.get(params.name)
        if tool is None:
            return for_client(ctx, unknown_tool(params.name))
        session = self.session(tool.spec.name, principal)
        caller = upstream.caller_for(ctx, principal, handled=("name", "arguments"))
        meta = dict(params.meta) if params.meta is not None else None
        arguments = params.arguments or {}
        downstream = self.downstream(tool.spec.name, principal)

        async def work() -> dict[str, Any]:
            return await self.calls.call(tool, arguments, meta, principal=principal, session=downstream)

        identity = (
            (tool.name, json.dumps(arguments, sort_keys=True, default=str)) if tool.side_effects else None
        )
        asks = tool.side_effects and approval.needed(tool.policy.approve, arguments)
        started = metrics.now()
        result = await self._serve(ctx, caller, session, work, identity=identity, asks=asks)
        self.metrics.observe(tool.name, result, started)
        return for_client(ctx, result)

    # ---- resources ---------------------------------------------------------------------------

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        principal = self._principal(ctx)
        out: list[dict[str, Any]] = [r for p in self.providers for r in p.resources()]
        for session, listed in await self._listings(principal, "resources/list", "resources"):
            out.extend(names.expose_resource(session.spec, r) for r in listed)
        return for_client(ctx, {"resources": out})

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        principal = self._principal(ctx)
        out: list[dict[str, Any]] = [t for p in self.providers for t in p.templates()]
        for session, listed in await self._listings(
            principal, "resources/templates/list", "resourceTemplates"
        ):
            out.extend(names.expose_resource(session.spec, t) for t in listed)
        return for_client(ctx, {"resourceTemplates": out})

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> dict[str, Any]:
        uri = str(params.uri)
        principal = self._principal(ctx)
        check_uri(uri)  # security hook: bounded URIs
        for provider in self.providers:
            if provider.handles(uri):
                return for_client(ctx, await provider.read(principal, uri))
        first_error: MCPError | None = None
        for session, known_as in self._resource_owners(principal, uri):
            caller = upstream.caller_for(ctx, principal, handled=("uri",))

            async def work(session: DownstreamSession = session, known_as: str = known_as) -> dict[str, Any]:
                return await session.read_resource(known_as)

            try:
                result = await self._serve(ctx, caller, session, work)
            except DownstreamError as exc:
                error = as_mcp_error(exc, self.secrets)
                if error.code not in NOT_FOUND:
                    raise error from None
                first_error = first_error or error
                continue
            except DownstreamUnavailable as exc:
                first_error = first_error or as_mcp_error(exc, self.secrets)
                continue
            return for_client(ctx, _expose_contents(session.spec, result))
        raise first_error or MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {uri}")

    def _resource_owners(self, principal: str, uri: str) -> list[tuple[DownstreamSession, str]]:
        """Who to ask for ``uri``, in order (see ``gateway/server/names.py``)."""
        assert self.pool is not None
        claimed = names.claimed_by_prefix(self.specs, uri)
        if claimed is not None:
            spec, known_as = claimed
            return [(self.session(spec.name, principal), known_as)]
        sessions = [s for s in self.pool.sessions_of(principal) if not s.spec.resource_prefix]
        listing = [s for s in sessions if any(r.get("uri") == uri for r in s.resources)]
        templated = [
            s
            for s in sessions
            if s not in listing
            and any(names.template_matches(str(t.get("uriTemplate", "")), uri) for t in s.resource_templates)
        ]
        rest = [s for s in sessions if s not in listing and s not in templated and _serves_resources(s)]
        return [(s, uri) for s in (*listing, *templated, *rest)]

    # ---- prompts -----------------------------------------------------------------------------

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        principal = self._principal(ctx)
        listings = [(s.spec, p) for s, p in await self._listings(principal, "prompts/list", "prompts")]
        out = [p for p, _ in self.prompts.values()]
        out.extend(names.exposed_prompts(listings, reserved=self.prompts))
        return for_client(ctx, {"prompts": out})

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> dict[str, Any]:
        principal = self._principal(ctx)
        own = self.prompts.get(params.name)
        if own is not None:
            return for_client(ctx, own[1](params.arguments or {}))
        ref = self._prompt_ref(principal, params.name)
        if ref is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
        session = self.session(ref.server, principal)
        caller = upstream.caller_for(ctx, principal, handled=("name", "arguments"))

        async def work() -> dict[str, Any]:
            return await session.get_prompt(ref.name, params.arguments)

        try:
            return for_client(ctx, await self._serve(ctx, caller, session, work))
        except (DownstreamError, DownstreamUnavailable) as exc:
            raise as_mcp_error(exc, self.secrets) from None

    def _prompt_ref(self, principal: str, name: str) -> names.PromptRef | None:
        assert self.pool is not None
        listings = [(s.spec, s.prompts) for s in self.pool.sessions_of(principal)]
        return names.prompt_names(listings, reserved=self.prompts).get(name)

    async def _listings(
        self, principal: str, method: str, key: str
    ) -> list[tuple[DownstreamSession, list[dict[str, Any]]]]:
        """Every ready server's list, asked now (a list cached at the last change may be stale)."""
        assert self.pool is not None
        out: list[tuple[DownstreamSession, list[dict[str, Any]]]] = []
        for session in self.pool.sessions_of(principal):
            if not session.ready or not _serves(session, method):
                continue
            try:
                out.append((session, await session.list_all(method, key)))
            except (DownstreamError, DownstreamUnavailable) as exc:
                logger.warning("downstream %s: %s failed: %s", session.name, method, exc)
        return out

    # ---- completion, logging, roots ----------------------------------------------------------

    async def complete(
        self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> dict[str, Any]:
        principal = self._principal(ctx)
        raw = dict(ctx.params or {})
        ref = dict(raw.get("ref") or {})
        owner: DownstreamSession | None = None
        if ref.get("type") == "ref/prompt":
            found = self._prompt_ref(principal, str(ref.get("name")))
            if found is not None:
                owner, ref["name"] = self.session(found.server, principal), found.name
        elif ref.get("type") == "ref/resource":
            uri = str(ref.get("uri"))
            for session, known_as in self._template_owners(principal, uri):
                owner, ref["uri"] = session, known_as
                break
        if owner is None:
            raise MCPError(
                code=types.INVALID_PARAMS, message=f"Unknown reference: {ref.get('name') or ref.get('uri')}"
            )
        if owner.capabilities.completions is None:
            return for_client(ctx, {"completion": {"values": [], "hasMore": False}})
        caller = upstream.caller_for(ctx, principal, handled=("ref",))
        session = owner

        async def work() -> dict[str, Any]:
            return await session.request("completion/complete", {"ref": ref}, timeout=session.spec.timeout)

        try:
            return for_client(ctx, await self._serve(ctx, caller, session, work))
        except (DownstreamError, DownstreamUnavailable) as exc:
            raise as_mcp_error(exc, self.secrets) from None

    def _template_owners(self, principal: str, uri: str) -> list[tuple[DownstreamSession, str]]:
        assert self.pool is not None
        claimed = names.claimed_by_prefix(self.specs, uri)
        if claimed is not None:
            return [(self.session(claimed[0].name, principal), claimed[1])]
        return [
            (s, uri)
            for s in self.pool.sessions_of(principal)
            if not s.spec.resource_prefix and any(t.get("uriTemplate") == uri for t in s.resource_templates)
        ]

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> dict[str, Any]:
        """A 2025-era client's level: kept for its connection (the gateway filters what it relays)
        and passed to its principal's servers as the lowest level any of its clients wants."""
        principal = self._principal(ctx)
        from gateway import _sdk

        _sdk.connection(ctx).state[upstream.LOG_LEVEL_STATE] = params.level
        wanted = min(
            (
                c.state.get(upstream.LOG_LEVEL_STATE, upstream.DEFAULT_LEGACY_LOG_LEVEL)
                for c in self.upstreams.of(principal)
            ),
            key=_level_rank,
            default=params.level,
        )
        assert self.pool is not None
        for session in self.pool.sessions_of(principal):
            if session.ready and not session.modern and session.capabilities.logging is not None:
                try:
                    await session.request("logging/setLevel", {"level": wanted}, timeout=session.spec.timeout)
                except (DownstreamError, DownstreamUnavailable) as exc:
                    logger.info("downstream %s: logging/setLevel failed: %s", session.name, exc)
        return {}

    async def roots_changed(
        self, ctx: ServerRequestContext[Any, Any], params: types.NotificationParams
    ) -> None:
        """A client's roots changed (or it just connected with roots): its servers should ask again."""
        principal = self._principal(ctx)
        caps = ctx.session.client_capabilities
        if ctx.method == "notifications/initialized" and (caps is None or caps.roots is None):
            return
        assert self.pool is not None
        for session in self.pool.sessions_of(principal):
            if not session.modern:
                await session.notify("notifications/roots/list_changed")

    # ---- tasks -------------------------------------------------------------------------------

    async def task_request(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        """``tasks/get|result|cancel|update`` to the server that made the task; ``tasks/list`` to all."""
        principal = self._principal(ctx)
        assert self.pool is not None
        if ctx.method == "tasks/list":
            listed: list[Any] = []
            for session in self.pool.sessions_of(principal):
                offered = session.capabilities.tasks
                if session.ready and offered is not None and offered.list is not None:
                    try:
                        page = await session.request("tasks/list", {}, timeout=session.spec.timeout)
                    except (DownstreamError, DownstreamUnavailable) as exc:
                        logger.info("downstream %s: tasks/list failed: %s", session.name, exc)
                        continue
                    listed.extend(page.get("tasks") or [])
            return for_client(ctx, {"tasks": listed})
        raw = dict(ctx.params or {})
        server, task_id = tasks.owner(raw.get("taskId"))
        if server not in self.pool.sessions:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown task: {raw.get('taskId')}")
        session = self.session(server, principal)
        caller = upstream.caller_for(ctx, principal, handled=("taskId",))
        wait = session.spec.max_timeout if ctx.method == "tasks/result" else session.spec.timeout

        async def work() -> dict[str, Any]:
            return await session.request(ctx.method, {"taskId": task_id}, timeout=wait)

        try:
            return for_client(ctx, await self._serve(ctx, caller, session, work))
        except (DownstreamError, DownstreamUnavailable) as exc:
            raise as_mcp_error(exc, self.secrets) from None

    def _offered_tasks(self) -> tuple[types.ServerTasksCapability | None, bool]:
        """What of tasks the first sessions' servers offer: 2025-11-25 tasks, the 2026-07-28 extension."""
        assert self.pool is not None
        legacy = [
            s.capabilities.tasks for s in self.pool.sessions.values() if s.capabilities.tasks is not None
        ]
        extension = any(
            tasks.EXTENSION in (s.capabilities.extensions or {}) for s in self.pool.sessions.values()
        )
        if not legacy:
            return None, extension
        return (
            types.ServerTasksCapability(
                list=types.TasksListCapability() if any(t.list is not None for t in legacy) else None,
                cancel=types.TasksCancelCapability() if any(t.cancel is not None for t in legacy) else None,
                requests=types.ServerTasksRequestsCapability(
                    tools=types.TasksToolsCapability(call=types.TasksCallCapability())
                ),
            ),
            extension,
        )

    # ---- subscriptions -----------------------------------------------------------------------

    def _subscription_handlers(self) -> dict[str, Any]:
        """The audit subscriptions (``gateway.audit``), with downstream URIs subscribed downstream too."""
        handlers = dict(self.subscription_handlers)
        subscribe = handlers.get("on_subscribe_resource")
        unsubscribe = handlers.get("on_unsubscribe_resource")
        if subscribe is None:
            return handlers

        async def on_subscribe(
            ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
        ) -> Any:
            await self._subscribe_downstream(ctx, str(params.uri), "resources/subscribe", +1)
            return await subscribe(ctx, params)

        async def on_unsubscribe(
            ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
        ) -> Any:
            await self._subscribe_downstream(ctx, str(params.uri), "resources/unsubscribe", -1)
            return await unsubscribe(ctx, params) if unsubscribe is not None else {}

        handlers["on_subscribe_resource"] = on_subscribe
        handlers["on_unsubscribe_resource"] = on_unsubscribe
        listen = handlers.get("on_subscriptions_listen")
        if listen is not None:

            async def on_listen(
                ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
            ) -> Any:
                uris = [str(u) for u in params.notifications.resource_subscriptions or ()]
                subscribed: list[str] = []
                try:
                    for uri in uris:
                        await self._subscribe_downstream(ctx, uri, "resources/subscribe", +1)
                        subscribed.append(uri)
                    return await listen(ctx, params)
                finally:
                    with anyio.CancelScope(shield=True):
                        for uri in subscribed:
                            with contextlib.suppress(MCPError):
                                await self._subscribe_downstream(ctx, uri, "resources/unsubscribe", -1)

            handlers["on_subscriptions_listen"] = on_listen
        return handlers

    async def _subscribe_downstream(
        self, ctx: ServerRequestContext[Any, Any], uri: str, method: str, delta: int
    ) -> None:
        """Subscribe the owner of a downstream resource (the first server that lists or templates it)."""
        principal = self._principal(ctx)
        if any(p.handles(uri) for p in self.providers):
            return
        for session, known_as in self._resource_owners(principal, uri)[:1]:
            try:
                await session.watch_resource(known_as, delta)
            except (DownstreamError, DownstreamUnavailable) as exc:
                raise as_mcp_error(exc, self.secrets) from None

    async def _from_downstream(self, session: DownstreamSession, method: str, params: dict[str, Any]) -> None:
        """What a downstream said outside any request, to the clients of the session's principal."""
        principal = session.principal
        if method in ("notifications/message", "notifications/elicitation/complete"):
            await self.upstreams.notify(principal, method, params)
            return
        if method == "notifications/resources/updated":
            if self.subscriptions is not None and isinstance(params.get("uri"), str):
                uri = names.expose_uri(session.spec, params["uri"])
                await self.subscriptions.publish(principal, ResourceUpdated(uri=uri))
            return
        event = {
            "notifications/tools/list_changed": ToolsListChanged(),
            "notifications/prompts/list_changed": PromptsListChanged(),
            "notifications/resources/list_changed": ResourcesListChanged(),
        }.get(method)
        if event is None:
            return
        await self.upstreams.notify(principal, method, None)
        if self.subscriptions is not None:
            await self.subscriptions.publish(principal, event)

    # ---- the server ----------------------------------------------------------------------------

    def instructions(self) -> str:
        """The gateway's own instructions, then each server's, under its name."""
        parts = [INSTRUCTIONS]
        if self.pool is not None:
            for name, session in self.pool.sessions.items():
                if session.instructions:
                    parts.append(f"## {name}\n\n{session.instructions.strip()}")
        return "\n\n".join(parts)

    def server(self) -> Server[Any]:
        """The low-level server with this gateway's handlers, for any transport."""
        server = _Server(
            "idem-gateway",
            version=__version__,
            instructions=self.instructions(),
            on_list_tools=self.list_tools,  # type: ignore[arg-type]
            on_call_tool=self.call_tool,  # type: ignore[arg-type]
            on_list_resources=self.list_resources,  # type: ignore[arg-type]
            on_list_resource_templates=self.list_resource_templates,  # type: ignore[arg-type]
            on_read_resource=self.read_resource,  # type: ignore[arg-type]
            on_list_prompts=self.list_prompts,  # type: ignore[arg-type]
            on_get_prompt=self.get_prompt,  # type: ignore[arg-type]
            on_completion=self.complete,  # type: ignore[arg-type]
            get_tool_input_schema=self._input_schema,
            **self._subscription_handlers(),
            # Lists differ per principal (audit) and change when a downstream reconnects.
            cache_hints={m: CacheHint(ttl_ms=0, scope="private") for m in CACHEABLE_METHODS},  # type: ignore[misc]
        )
        # The 2025-era logging and roots requests, registered directly: the constructor
        # arguments for them warn that 2026-07-28 deprecates them, and the gateway serves both eras.
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.set_logging_level)
        server.add_notification_handler(
            "notifications/roots/list_changed", types.NotificationParams, self.roots_changed
        )
        server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self.roots_changed
        )
        for method in tasks.METHODS:
            server.add_request_handler(method, TaskParams, self.task_request)
        server.tasks, server.tasks_extension = self._offered_tasks()
        # The SDK's tracing middleware is a per-message cost this proxy does not need on its hot
        # path; gateway.tracing puts its own here when traces are asked for. A 2025-11-25 task
        # handle needs one of ours, only when a downstream offers tasks.
        handles = [_TaskHandles(self)] if server.tasks is not None else []
        server.middleware = [*self.middleware, *handles]
        return server

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.catalog.get(name) if self.catalog is not None else None
        return tool.listed.get("inputSchema") if tool is not None else None


class _TaskHandles:
    """2025-11-25: a task-augmented ``tools/call`` may answer with a task handle, which the SDK's
    result check for ``tools/call`` (content required) would refuse; such a call is served here,
    past that check (a middleware's own result is its own, per the SDK's middleware contract)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        raw = ctx.params or {}
        if ctx.method != "tools/call" or not isinstance(raw.get("task"), dict) or upstream.is_modern(ctx):
            return await call_next(ctx)
        params = types.CallToolRequestParams.model_validate(raw, by_name=False)
        return await self.gateway.call_tool(ctx, params)


def _serves(session: DownstreamSession, method: str) -> bool:
    caps = session.capabilities
    if method.startswith("resources/"):
        return caps.resources is not None
    if method.startswith("prompts/"):
        return caps.prompts is not None
    return True


def _serves_resources(session: DownstreamSession) -> bool:
    return session.ready and session.capabilities.resources is not None


def _expose_contents(spec: ServerSpec, result: dict[str, Any]) -> dict[str, Any]:
    if not spec.resource_prefix or not isinstance(result.get("contents"), list):
        return result
    contents = [names.expose_resource(spec, c) if isinstance(c, dict) else c for c in result["contents"]]
    return {**result, "contents": contents}


def _level_rank(level: str) -> int:
    from gateway.downstream.relay import LOG_LEVELS

    return LOG_LEVELS.index(level) if level in LOG_LEVELS else 0
