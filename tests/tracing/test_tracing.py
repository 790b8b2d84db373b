"""Traces: one trace from the agent through the gateway to the tool.

In-process tests run the real ``Gateway`` (and the example server as a real subprocess) under
the SDK's in-memory exporter; one test runs ``python -m gateway serve`` with the console
exporter and reads its spans from stderr; the last ones show that without the ``[otel]``
extra (or without ``OTEL_*`` asking) nothing of it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp_types import RequestParamsMeta
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from gateway.manifests import load_manifests
from gateway.server.app import Gateway
from gateway.store import open_store
from gateway.tracing import requested
from gateway.tracing.otel import KEY_HASH, OUTCOME, SERVER, TOOL, Tracing, key_hash
from tests.http.test_http import http_downstream
from tests.support import Setup, error_code, new_key, outcome, request_meta, wait_for

WAIT = 30.0
SECRETIVE: dict[str, Any] = {
    "customer": "customer-3b1f-do-not-trace",
    "amount": 987.65,
    "card_number": "4000056655665556",
}


class _Switch(Sampler):
    """Records while a test of this module runs; drops everything afterwards (the global
    provider outlives the module, and other tests' in-process SDK spans need not be kept)."""

    on = False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        *rest: Any,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "switch"


_EXPORTER = InMemorySpanExporter()
_SWITCH = _Switch()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter behind the process's tracer provider (set once)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _SWITCH.on = True
    try:
        yield _EXPORTER
    finally:
        _SWITCH.on = False
        _EXPORTER.clear()


@asynccontextmanager
async def traced_gateway(setup: Setup, *, mode: str = "auto") -> AsyncIterator[Client]:
    """The real gateway in this process, instrumented, with a real client connected in-process."""
    tracing = Tracing(trace.get_tracer("idem-gateway"))
    store = open_store(setup.store)
    gateway = Gateway(load_manifests(setup.manifests), tracing.store(store))
    tracing.instrument(gateway)
    async with gateway.running(), Client(gateway.server(), mode=mode, cache=None) as client:
        yield client


@asynccontextmanager
async def agent_span(name: str = "agent") -> AsyncIterator[tuple[Any, RequestParamsMeta]]:
    """The agent's own span, and the ``_meta`` an agent sends to carry it (W3C trace context)."""
    with trace.get_tracer("agent").start_as_current_span(name) as span:
        context = span.get_span_context()
        traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
        yield span, request_meta({"traceparent": traceparent, "tracestate": "agent=1"})


def of_trace(exporter: InMemorySpanExporter, span: Any) -> list[ReadableSpan]:
    trace_id = span.get_span_context().trace_id
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def descends_from(span: ReadableSpan, ancestor_id: int, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    parent = span.parent
    while parent is not None:
        if parent.span_id == ancestor_id:
            return True
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return False


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[str]:
    return sorted(
        s.name for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    )


def everything_said(spans: list[ReadableSpan]) -> str:
    """Every name, attribute and event of the spans, as one string to search."""
    return json.dumps([json.loads(s.to_json()) for s in spans])


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest(server={"timeout": "3s"}, tools={"create_invoice": {"redact": ["card_number"]}})
    return made


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_keyed_call_is_one_trace_from_the_agent_with_claim_downstream_and_completion(
    setup: Setup, spans: InMemorySpanExporter, mode: str
) -> None:
    key = new_key()
    async with traced_gateway(setup, mode=mode) as client:
        async with agent_span() as (agent, meta):
            with anyio.fail_after(WAIT):
                first = await client.call_tool(
                    "create_invoice", {**SECRETIVE, "idempotency_key": key}, meta=meta
                )
                again = await client.call_tool(
                    "create_invoice", {**SECRETIVE, "idempotency_key": key}, meta=meta
                )
    assert (outcome(first), outcome(again)) == ("executed", "replayed")
    mine = of_trace(spans, agent)
    executed, replayed = sorted(named(mine, "tools/call create_invoice"), key=lambda s: s.start_time or 0)
    for call in (executed, replayed):
        assert call.kind is trace.SpanKind.SERVER
        assert descends_from(call, agent.get_span_context().span_id, mine)  # the agent's trace, continued
        assert call.attributes is not None
        assert call.attributes[TOOL] == "create_invoice" and call.attributes[SERVER] == "payments"
        assert call.attributes[KEY_HASH] == key_hash("local", key)
    assert executed.attributes is not None and replayed.attributes is not None
    assert (executed.attributes[OUTCOME], replayed.attributes[OUTCOME]) == ("executed", "replayed")
    assert children(mine, executed) == [
        "idem-gateway claim",
        "idem-gateway complete",
        "idem-gateway downstream create_invoice",
    ]
    # A replay never reaches the tool; this one (a result this gateway stored) not even the store.
    assert children(mine, replayed) == ["idem-gateway replay from memory"]
    (downstream,) = named(mine, "idem-gateway downstream create_invoice")
    assert children(mine, downstream) == ["MCP send tools/call create_invoice"]  # the SDK's own send
    claims = named(mine, "idem-gateway claim")
    for span in [
        *claims,
        *named(mine, "idem-gateway complete"),
        *named(mine, "idem-gateway replay from memory"),
    ]:
        assert span.attributes is not None and span.attributes[KEY_HASH] == key_hash("local", key)
        assert span.attributes[TOOL] == "create_invoice" and span.attributes[SERVER] == "payments"
    assert [bool(c.attributes and c.attributes["idem_gateway.claim.acquired"]) for c in claims] == [True]
    # Never the key, never an argument.
    said = everything_said(mine)
    assert key not in said
    for value in SECRETIVE.values():
        assert str(value) not in said


async def test_the_trace_reaches_the_tool_in_its_meta_and_its_http_headers(
    setup: Setup, spans: InMemorySpanExporter
) -> None:
    async with http_downstream(setup) as url:
        setup.manifest(name="remote", http_url=url, server={"tool_prefix": "remote_"})
        async with traced_gateway(setup) as client:
            async with agent_span() as (agent, meta):
                with anyio.fail_after(WAIT):
                    seen_meta = await client.call_tool("echo_meta", {}, meta=meta)
                    seen_headers = await client.call_tool(
                        "remote_echo_headers", {"idempotency_key": new_key()}, meta=meta
                    )
    trace_id = f"{agent.get_span_context().trace_id:032x}"
    mine = of_trace(spans, agent)
    # _meta: the downstream got the gateway's send span as its parent, in the agent's trace.
    received = (seen_meta.structured_content or {}).get("traceparent", "")
    _, got_trace, got_parent, _ = received.split("-")
    (send,) = named(mine, "MCP send tools/call echo_meta")
    assert got_trace == trace_id and got_parent == f"{send.context.span_id:016x}"
    (call,) = named(mine, "tools/call echo_meta")
    assert call.attributes is not None and call.attributes[OUTCOME] == "passed_through"
    # HTTP: the same trace in the request's traceparent header.
    headers = seen_headers.structured_content or {}
    headers = headers.get("result", headers)
    assert headers["traceparent"].split("-")[1] == trace_id
    (downstream,) = named(mine, "idem-gateway downstream echo_headers")
    assert headers["traceparent"].split("-")[2] == f"{downstream.context.span_id:016x}"


async def test_a_downstream_timeout_shows_as_lost_then_unknown(
    setup: Setup, spans: InMemorySpanExporter
) -> None:
    arguments = {"label": "batch", "gate_file": str(setup.tmp / "never"), "idempotency_key": new_key()}
    async with traced_gateway(setup) as client, agent_span() as (agent, meta):
        with anyio.fail_after(WAIT):
            result = await client.call_tool("slow_op", arguments, meta=meta)
    assert error_code(result) == "outcome_unknown"
    mine = of_trace(spans, agent)
    (call,) = named(mine, "tools/call slow_op")
    assert call.attributes is not None and call.attributes[OUTCOME] == "outcome_unknown"
    assert children(mine, call) == [
        "idem-gateway claim",
        "idem-gateway downstream slow_op",
        "idem-gateway mark_unknown",
    ]
    (downstream,) = named(mine, "idem-gateway downstream slow_op")
    assert downstream.attributes is not None
    assert downstream.attributes["idem_gateway.downstream.lost"] == "timeout"
    assert downstream.attributes["error.type"] == "DownstreamLost"
    (marked,) = named(mine, "idem-gateway mark_unknown")
    assert marked.attributes is not None
    assert marked.attributes["idem_gateway.unknown.reason"] == "timeout"


# ---- a real gateway process ----------------------------------------------------------------------


async def test_a_gateway_process_exports_its_spans_by_the_otel_variables(
    setup: Setup, spans: InMemorySpanExporter
) -> None:
    log = setup.tmp / "gateway.stderr"
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "gw-under-test",
    }
    key = new_key()
    with log.open("w") as errlog:
        params = setup.gateway_params(env=env)
        async with Client(stdio_client(params, errlog=errlog), cache=None) as client:
            async with agent_span() as (agent, meta):
                with anyio.fail_after(WAIT):
                    result = await client.call_tool(
                        "create_invoice", {**SECRETIVE, "idempotency_key": key}, meta=meta
                    )
                trace_id = f"0x{agent.get_span_context().trace_id:032x}"

            def exported() -> list[dict[str, Any]]:
                found = []
                for line in log.read_text().splitlines():
                    if line.startswith("{") and '"trace_id"' in line:
                        span = json.loads(line)
                        if span["context"]["trace_id"] == trace_id:
                            found.append(span)
                return found

            await wait_for(
                lambda: (
                    {"tools/call create_invoice", "idem-gateway complete"} <= {s["name"] for s in exported()}
                )
            )
    assert outcome(result) == "executed"
    got = {s["name"]: s for s in exported()}
    assert {"idem-gateway claim", "idem-gateway downstream create_invoice"} <= set(got)
    call = got["tools/call create_invoice"]
    assert (
        call["attributes"][OUTCOME] == "executed"
        and call["resource"]["attributes"]["service.name"] == "gw-under-test"
    )
    assert call["attributes"][KEY_HASH] == key_hash("local", key)
    assert key not in log.read_text() and SECRETIVE["customer"] not in log.read_text()


# ---- off: nothing imported ---------------------------------------------------------------------------

PROBE = """
import json, sys
if sys.argv[1] == "blocked":
    sys.modules["opentelemetry.sdk"] = None  # as if the [otel] extra were not installed
from gateway.cli import main
code = main(["serve", "--manifests", sys.argv[2], "--store", sys.argv[3]])
ours = ("gateway.tracing", "opentelemetry.sdk")
loaded = sorted(m for m in sys.modules if m.startswith(ours) and sys.modules[m])
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def probe(setup: Setup, how: str, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, how, str(setup.manifests), setup.store],
        env={**clean, **env},
        stdin=subprocess.DEVNULL,  # serve over stdio ends at once
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout == ""
    report = json.loads(next(line for line in done.stderr.splitlines() if line.startswith('{"code"')))
    assert report["code"] == 0, done.stderr
    return report, done.stderr


def test_without_the_extra_nothing_of_it_is_imported(setup: Setup) -> None:
    blocked, stderr = probe(setup, "blocked", {"OTEL_TRACES_EXPORTER": "console"})
    assert blocked["loaded"] == ["gateway.tracing"]  # the switch itself imports nothing of OpenTelemetry's
    assert "pip install 'mcp-idempotency-gateway[otel]'" in stderr
    # Installed but not asked for: the same. (Asked for, it loads: the gateway process test.)
    not_asked, _ = probe(setup, "installed", {})
    assert not_asked["loaded"] == ["gateway.tracing"]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_otel_variables_decide_whether_traces_are_asked_for(environ: dict[str, str], on: bool) -> None:
    assert requested(environ) is on
