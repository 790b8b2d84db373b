"""The gateway's MCP face: the low-level ``Server`` whose handlers come from manifests.

``Gateway`` owns the long-lived parts (store, downstream pool, guard, background lease renewal
and sweeping) under one task group; ``Gateway.server()`` builds the handlers that every
transport (stdio, streamable HTTP) serves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from gateway import __version__
from gateway.downstream import DownstreamPool, DownstreamSession
from gateway.errors import StoreUnavailable
from gateway.idempotency.fingerprint import Fingerprinter
from gateway.idempotency.guard import Guard
from gateway.manifests.models import ServerSpec
from gateway.secret import SecretError, check_value
from gateway.server import metrics
from gateway.server.call_tool import Downstream, call_tool
from gateway.server.catalog import Catalog
from gateway.store.base import Store
from gateway.store.records import Event

logger = logging.getLogger(__name__)

PRINCIPAL_SCOPE_KEY = "idem_gateway.principal"
INSTRUCTIONS = (
    "idem-gateway proxies tools and makes retries safe. Side-effecting tools need an "
    "idempotency_key: one new key per intended action, the same key for every retry of it, "
    "never one key for two actions. After outcome_unknown, read audit://keys/{key} instead of "
    "minting a new key."
)


class ResourceProvider(Protocol):
    """Resources the gateway serves itself (the audit trail), next to the downstreams' own."""

    def resources(self) -> list[dict[str, Any]]: ...

    def templates(self) -> list[dict[str, Any]]: ...

    def handles(self, uri: str) -> bool: ...

    async def read(self, principal: str, uri: str) -> dict[str, Any]: ...


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
        start_timeout: float = 10.0,
        clock: Callable[[], datetime] | None = None,
        secret: bytes | None = None,
        connect_wait: float = 2.0,
    ) -> None:
        self.specs = list(specs)
        self.store = store
        self.principal = principal
        self.sweep_interval = sweep_interval
        self.start_timeout = start_timeout
        self.connect_wait = connect_wait
        self.clock = clock or store.now  # the store's time: the database's on a shared server
        self.guard = Guard(store, clock=self.clock, lease_ttl=lease_ttl)
        # Fingerprints are keyed by the store's secret (a random one when none is given: a
        # gateway alone on its store, as in tests).
        secret = secret if secret is not None else os.urandom(32)
        self.fingerprint = Fingerprinter(secret)
        self._secret_check = check_value(secret)
        self.metrics = metrics.CallMetrics()  # served at /metrics over HTTP
        self.pool: DownstreamPool | None = None
        self.catalog: Catalog | None = None
        self.providers: list[ResourceProvider] = []
        self.prompts: dict[str, tuple[dict[str, Any], Callable[[dict[str, str]], dict[str, Any]]]] = {}
        # resources/subscribe, resources/unsubscribe, subscriptions/listen (gateway.audit installs them).
        self.subscription_handlers: dict[str, Any] = {}
        # Hooks for optional instrumentation (gateway.tracing): request middleware, and the
        # downstream a call is sent through (by server name).
        self.middleware: list[Any] = []
        self.downstream: Callable[[str], Downstream] = self.session
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
            async with DownstreamPool(
                self.specs, startup_timeout=self.start_timeout, connect_wait=self.connect_wait
            ) as pool:
                self.pool = pool
                self.catalog = Catalog({name: (s.spec, s) for name, s in pool.sessions.items()})
                for server, lacking in self.catalog.missing().items():
                    source = pool.sessions[server].spec.source.name
                    for name in lacking:
                        logger.warning("%s: tools.%s: the downstream does not offer this tool", source, name)
                async with anyio.create_task_group() as tg:
                    await tg.start(self.guard.serve)
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
            except StoreUnavailable as exc:  # the sweeper must outlive a store outage
                logger.error("sweep failed: %s", exc)
            except SecretError as exc:  # a configuration error: stop serving rather than guess
                self._fatal = exc
                scope.cancel()
                return
            await anyio.sleep(self.sweep_interval)

    def session(self, server: str) -> DownstreamSession:
        assert self.pool is not None
        return self.pool.sessions[server]

    def principal_of(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The caller: set by the HTTP auth middleware in the ASGI scope; over stdio, --principal."""
        scope = getattr(ctx.request, "scope", None)
        if isinstance(scope, dict):
            principal = scope.get(PRINCIPAL_SCOPE_KEY)
            if isinstance(principal, str):
                return principal
        return self.principal

    async def record(self, event: Event) -> None:
        await self.store.append_event(event)

    # ---- handlers ----------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        assert self.catalog is not None
        return {"resultType": "complete", "tools": [t.listed for t in self.catalog.all()]}

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> dict[str, Any]:
        assert self.catalog is not None
        tool = self.catalog.get(params.name)
        if tool is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        meta = dict(params.meta) if params.meta is not None else None
        started = metrics.now()
        result = await call_tool(
            tool,
            params.arguments or {},
            meta,
            principal=self.principal_of(ctx),
            session=self.downstream(tool.spec.name),
            guard=self.guard,
            audit=self.record,
            fingerprint=self.fingerprint,
        )
        result.setdefault("resultType", "complete")
        self.metrics.observe(tool.name, result, started)
        return result

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        out: list[dict[str, Any]] = [r for p in self.providers for r in p.resources()]
        for s in self._ready_sessions():
            out.extend(await s.list_resources())
        return {"resultType": "complete", "resources": out}

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        out: list[dict[str, Any]] = [t for p in self.providers for t in p.templates()]
        for s in self._ready_sessions():
            out.extend(await s.list_resource_templates())
        return {"resultType": "complete", "resourceTemplates": out}

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> dict[str, Any]:
        uri = str(params.uri)
        for provider in self.providers:
            if provider.handles(uri):
                return await provider.read(self.principal_of(ctx), uri)
        owner = await self._resource_owner(uri)
        if owner is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {uri}")
        return await owner.read_resource(uri)

    async def _resource_owner(self, uri: str) -> DownstreamSession | None:
        sessions = self._ready_sessions()
        for s in sessions:
            if any(r.get("uri") == uri for r in await s.list_resources()):
                return s
        # A templated URI: the first server whose template scheme matches.
        for s in sessions:
            for t in await s.list_resource_templates():
                prefix = str(t.get("uriTemplate", "")).split("{", 1)[0]
                if prefix and uri.startswith(prefix):
                    return s
        return None

    async def list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        out = [p for p, _ in self.prompts.values()]
        for s in self._ready_sessions():
            out.extend(await s.list_prompts())
        return {"resultType": "complete", "prompts": out}

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> dict[str, Any]:
        own = self.prompts.get(params.name)
        if own is not None:
            return own[1](params.arguments or {})
        for s in self._ready_sessions():
            if any(p.get("name") == params.name for p in await s.list_prompts()):
                return await s.get_prompt(params.name, params.arguments)
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")

    def _ready_sessions(self) -> list[DownstreamSession]:
        assert self.pool is not None
        return [s for s in self.pool.sessions.values() if s.ready]

    def server(self) -> Server[Any]:
        """The low-level server with this gateway's handlers, for any transport."""
        server: Server[Any] = Server(
            "idem-gateway",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,  # type: ignore[arg-type]
            on_call_tool=self.call_tool,  # type: ignore[arg-type]
            on_list_resources=self.list_resources,  # type: ignore[arg-type]
            on_list_resource_templates=self.list_resource_templates,  # type: ignore[arg-type]
            on_read_resource=self.read_resource,  # type: ignore[arg-type]
            on_list_prompts=self.list_prompts,  # type: ignore[arg-type]
            on_get_prompt=self.get_prompt,  # type: ignore[arg-type]
            get_tool_input_schema=self._input_schema,
            **self.subscription_handlers,
            # Lists differ per principal (audit) and change when a downstream reconnects.
            cache_hints={m: CacheHint(ttl_ms=0, scope="private") for m in CACHEABLE_METHODS},  # type: ignore[misc]
        )
        # The SDK's tracing middleware is a per-message cost this proxy does not need on its hot
        # path; gateway.tracing puts its own here when traces are asked for.
        server.middleware = list(self.middleware)
        return server

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.catalog.get(name) if self.catalog is not None else None
        return tool.listed.get("inputSchema") if tool is not None else None
