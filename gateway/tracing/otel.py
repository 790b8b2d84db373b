"""One trace per ``tools/call``, from the agent through the gateway to the tool.

    tools/call NAME                  SERVER    the SDK's middleware: continues the trace the
    │                                          client sent in the request's _meta (traceparent,
    │                                          tracestate), as the 2026-07-28 revision carries it
    ├── idem-gateway claim           INTERNAL  TracingStore: the atomic insert (or a take-over)
    ├── idem-gateway downstream NAME INTERNAL  TracedDownstream: the call to the tool, with the
    │   │                                      trace in the HTTP headers (traceparent)...
    │   └── MCP send tools/call NAME CLIENT    ...and, by the SDK's dispatcher, in its _meta
    └── idem-gateway complete        INTERNAL  TracingStore: the result stored (or mark_unknown,
                                               or release)

A replay has only the claim under its call span; a refusal before the claim has none.

Attributes: ``idem_gateway.tool`` and ``idem_gateway.server`` (every span of the call),
``idem_gateway.outcome`` (the call span: ``executed``, ``replayed``, a refusal's code, or
``passed_through`` for a read-only tool) and ``idem_gateway.key.hash`` (16 hex digits of the
SHA-256 of principal and key). Never the key itself, never an argument, never a result; an
error is recorded by its type only, since store and downstream messages may quote a key.

Built on the SDK's own OpenTelemetry support (its server middleware, reached through
``gateway._sdk``, and the dispatcher's injection into outbound ``_meta``) rather than beside
it: the call span is the SDK's, with the gateway's attributes added. Configured by the standard
``OTEL_*`` variables: exporters from ``OTEL_TRACES_EXPORTER`` (``console`` writes one JSON line
per span to stderr, since stdout carries the protocol; others by the SDK's exporter entry
points, e.g. ``otlp`` once ``opentelemetry-exporter-otlp`` is installed), the sampler from
``OTEL_TRACES_SAMPLER``, the service name from ``OTEL_SERVICE_NAME`` (default
``idem-gateway``). An application that set its own tracer provider keeps it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from gateway import __version__, _sdk, meta
from gateway.downstream.session import DownstreamSession
from gateway.idempotency.replays import ReplayCache
from gateway.store.base import Store
from gateway.store.records import Claim, ClaimResult, Event, Record, Settled

if TYPE_CHECKING:
    from gateway.server.app import Gateway

logger = logging.getLogger(__name__)

TOOL = "idem_gateway.tool"
SERVER = "idem_gateway.server"
OUTCOME = "idem_gateway.outcome"
KEY_HASH = "idem_gateway.key.hash"


def key_hash(principal: str, key: str) -> str:
    """Lets a trace backend group a key's calls without holding the key."""
    return hashlib.sha256(f"{principal}\0{key}".encode()).hexdigest()[:16]


def outcome_of(result: HandlerResult) -> str:
    """``executed`` / ``replayed`` / a refusal's code / ``passed_through`` (read-only)."""
    stamped = meta.outcome_of(result.get("_meta")) if isinstance(result, dict) else None
    return stamped or "passed_through"


@contextmanager
def _span(tracer: Tracer, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span that records a failure by its type only (messages may quote a key)."""
    with tracer.start_as_current_span(
        name, kind=SpanKind.INTERNAL, attributes=dict(attributes), record_exception=False,
        set_status_on_exception=False,
    ) as span:  # fmt: skip
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(StatusCode.ERROR, type(exc).__qualname__)
            raise


# ---- the call span -----------------------------------------------------------------------------


class ToolCallSpans:
    """Server middleware: the SDK's span for each ``tools/call``, with the gateway's attributes.

    Other requests pass straight through: the span is for the calls the gateway guards.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.sdk = _sdk.otel_middleware()

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)

        async def annotated(ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
            span = trace.get_current_span()  # the SDK's, continuing the client's trace
            name = ctx.params.get("name") if isinstance(ctx.params, dict) else None
            catalog = self.gateway.catalog
            tool = catalog.get(name) if catalog is not None and isinstance(name, str) else None
            if tool is not None:
                span.set_attributes({TOOL: tool.name, SERVER: tool.spec.name})
            result = await call_next(ctx)
            span.set_attribute(OUTCOME, outcome_of(result))
            return result

        return await self.sdk(ctx, annotated)


# ---- claim and completion: around the store ---------------------------------------------------


class TracingStore:
    """A ``Store`` whose claim and completion writes are spans; everything else passes through.

    The claim also names the key's hash on the call span (the current span when it runs):
    it is where the key is known for certain, however it arrived (argument, _meta, key_from).
    """

    def __init__(self, inner: Store, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _claim_attributes(self, claim: Claim) -> dict[str, Any]:
        digest = key_hash(claim.principal, claim.key)
        trace.get_current_span().set_attribute(KEY_HASH, digest)
        return {TOOL: claim.tool, SERVER: claim.server, KEY_HASH: digest}

    async def claim(self, claim: Claim) -> ClaimResult:
        with _span(self.tracer, "idem-gateway claim", self._claim_attributes(claim)) as span:
            result = await self.inner.claim(claim)
            span.set_attributes(
                {
                    "idem_gateway.claim.acquired": result.acquired,
                    "idem_gateway.record.state": result.record.state.value,
                }
            )
            return result

    async def take_over(self, claim: Claim, **options: Any) -> Record | None:
        attributes = {**self._claim_attributes(claim), "idem_gateway.claim.take_over": True}
        with _span(self.tracer, "idem-gateway claim", attributes) as span:
            record = await self.inner.take_over(claim, **options)
            span.set_attribute("idem_gateway.claim.acquired", record is not None)
            return record

    async def complete(self, principal: str, key: str, fence: int, **options: Any) -> Settled:
        with _span(self.tracer, "idem-gateway complete", _event_attributes(options.get("event"))) as span:
            settled = await self.inner.complete(principal, key, fence, **options)
            span.set_attributes(
                {
                    "idem_gateway.settled": settled.value,
                    "idem_gateway.result.is_error": bool(options.get("is_error")),
                }
            )
            return settled

    async def mark_unknown(self, principal: str, key: str, fence: int, **options: Any) -> bool:
        event = options.get("event")
        attributes = _event_attributes(event)
        reason = event.detail.get("reason") if isinstance(event, Event) else None
        if isinstance(reason, str):
            attributes["idem_gateway.unknown.reason"] = reason
        with _span(self.tracer, "idem-gateway mark_unknown", attributes) as span:
            marked = await self.inner.mark_unknown(principal, key, fence, **options)
            span.set_attribute("idem_gateway.stored", marked)
            return marked

    async def release(self, principal: str, key: str, fence: int, **options: Any) -> bool:
        attributes = _event_attributes(options.get("event")) or {KEY_HASH: key_hash(principal, key)}
        with _span(self.tracer, "idem-gateway release", attributes) as span:
            released = await self.inner.release(principal, key, fence, **options)
            span.set_attribute("idem_gateway.stored", released)
            return released


class TracingReplays(ReplayCache):
    """A replay cache (with the settings of the one it stands in for) whose hits are spans: a
    replay answered from memory touches no store, so this is where the call span learns its key."""

    def __init__(self, settings: ReplayCache, tracer: Tracer) -> None:
        super().__init__(
            ttl=settings.ttl,
            max_bytes=settings.max_bytes,
            max_entry=settings.max_entry,
            monotonic=settings.monotonic,
        )
        self.tracer = tracer

    def get(self, principal: str, key: str) -> Record | None:
        found = super().get(principal, key)
        if found is not None:
            digest = key_hash(principal, key)
            trace.get_current_span().set_attribute(KEY_HASH, digest)
            attributes = {TOOL: found.tool, SERVER: found.server, KEY_HASH: digest}
            with _span(self.tracer, "idem-gateway replay from memory", attributes):
                pass
        return found


def _event_attributes(event: Event | None) -> dict[str, Any]:
    if not isinstance(event, Event):
        return {}
    attributes: dict[str, Any] = {TOOL: event.tool, SERVER: event.server}
    if event.key is not None:
        attributes[KEY_HASH] = key_hash(event.principal, event.key)
    return attributes


# ---- the downstream call ----------------------------------------------------------------------------


class TracedDownstream:
    """A downstream session whose ``call_tool`` is a span, carrying the trace to the tool.

    Into ``_meta`` the SDK's dispatcher injects it (its send span is a child of this one);
    HTTP downstreams also get ``traceparent``/``tracestate`` headers, for HTTP-level tracing.
    Everything but ``call_tool`` is the session's own.
    """

    def __init__(self, session: DownstreamSession, tracer: Tracer) -> None:
        self.session = session
        self.tracer = tracer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    async def call_tool(self, name: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
        attributes = {SERVER: self.session.name, "idem_gateway.downstream.tool": name}
        with _span(self.tracer, f"idem-gateway downstream {name}", attributes) as span:
            if self.session.spec.transport == "http":
                headers = dict(options.get("headers") or {})
                propagate.inject(headers)
                options["headers"] = headers
            try:
                result = await self.session.call_tool(name, arguments, **options)
            except Exception as exc:
                reason = getattr(exc, "reason", None)
                if isinstance(reason, str):
                    span.set_attribute("idem_gateway.downstream.lost", reason)
                raise
            if result.get("isError"):
                span.set_attribute("idem_gateway.result.is_error", True)
            return result


# ---- configuration ------------------------------------------------------------------------------------


class Tracing:
    """The tracer and the three places it reaches: the store, the sessions, the server."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing:
        """Set the global tracer provider from ``OTEL_*`` unless the application set one."""
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            resource = Resource.create()
            if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_NAME: "idem-gateway"}))
            provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
            for exporter in _exporters(environ):
                provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)  # flushed at exit by the provider itself
        return cls(trace.get_tracer("idem-gateway", __version__))

    def store(self, store: Store) -> Store:
        return TracingStore(store, self.tracer)

    def instrument(self, gateway: Gateway) -> None:
        """Spans for the gateway's calls and its downstream sessions (before it starts)."""
        gateway.middleware.append(ToolCallSpans(gateway))
        if gateway.guard.replays is not None:
            gateway.guard.replays = TracingReplays(gateway.guard.replays, self.tracer)
        sessions, tracer = gateway.session, self.tracer

        def traced(server: str, principal: str | None = None) -> TracedDownstream:
            return TracedDownstream(sessions(server, principal), tracer)

        gateway.downstream = traced


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stderr, formatter=_one_line))
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
            logger.warning(
                "no OpenTelemetry span exporter named %r is installed%s; its spans are dropped", name, hint
            )
            continue
        exporters.append(next(iter(found)).load()())
    return exporters


def _one_line(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"
