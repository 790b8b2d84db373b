"""OpenAPISession in-process: the document's lifecycle, and sent / not sent for every transport failure.

The transport here is scripted: it reports (through httpcore's trace hook, as the real one
does) that it started writing the request, or not, and then fails the way it is told. The real
socket cases (refused, 5xx, dropped, timeout) are in ``test_openapi_gateway.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from gateway.downstream.errors import DownstreamLost, DownstreamRejected, DownstreamUnavailable
from gateway.downstream.openapi import OpenAPISession
from gateway.downstream.pool import session_for
from gateway.downstream.session import DownstreamSession
from gateway.manifests.models import ServerSpec
from tests.openapi.openapi_kit import DOCUMENT

WAIT = 20.0
SENT = "http11.send_request_headers.started"


class Scripted(httpx2.AsyncBaseTransport):
    """Fails every request with ``error``, after reporting the request written if ``sent``."""

    def __init__(self, error: BaseException | None, *, sent: bool) -> None:
        self.error = error
        self.sent = sent
        self.requests: list[httpx2.Request] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        trace = request.extensions.get("trace")
        if self.sent and trace is not None:
            await trace(SENT, {"request": request})
        if self.error is not None:
            raise self.error
        await anyio.sleep_forever()  # never answers
        raise AssertionError("unreachable")


def spec(tmp: Path, document: Path = DOCUMENT, **extra: Any) -> ServerSpec:
    return ServerSpec(
        name="invoices",
        source=tmp / "invoices.toml",
        transport="openapi",
        openapi_spec=str(document),
        base_url="http://api.test",
        headers={"Authorization": "Bearer secret-token-value"},
        **extra,
    )


@asynccontextmanager
async def running(session: OpenAPISession) -> AsyncIterator[OpenAPISession]:
    async with anyio.create_task_group() as tg:
        await tg.start(session.run)
        try:
            yield session
        finally:
            tg.cancel_scope.cancel()


async def call(session: OpenAPISession, *, timeout: float = WAIT) -> dict[str, Any]:
    return await session.call_tool(
        "createInvoice",
        {"customer": "acme", "amount": 1},
        headers={"Idempotency-Key": "k" * 16},
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "error",
    [
        httpx2.ConnectError("[Errno 111] Connection refused"),
        httpx2.ConnectError("[Errno -2] Name or service not known"),
        httpx2.ConnectTimeout("connect timed out"),
        httpx2.PoolTimeout("no connection"),
        httpx2.ProxyError("proxy refused"),
    ],
)
async def test_a_failure_before_the_request_is_written_is_unavailable(
    tmp_path: Path, error: Exception
) -> None:
    transport = Scripted(error, sent=False)
    async with running(OpenAPISession(spec(tmp_path), transport=transport)) as session:
        assert await session.wait_attempt(WAIT)
        with pytest.raises(DownstreamUnavailable, match="Nothing was sent"):
            await call(session)
    assert len(transport.requests) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx2.ReadTimeout("read timed out"), "timeout"),
        (httpx2.WriteTimeout("write timed out"), "timeout"),
        (httpx2.RemoteProtocolError("Server disconnected without sending a response."), "connection_lost"),
        (httpx2.ReadError("connection reset"), "connection_lost"),
        (httpx2.WriteError("broken pipe"), "connection_lost"),
        (httpx2.DecodingError("bad gzip"), "connection_lost"),
    ],
)
async def test_a_failure_after_the_request_is_written_is_lost(
    tmp_path: Path, error: Exception, reason: str
) -> None:
    async with running(OpenAPISession(spec(tmp_path), transport=Scripted(error, sent=True))) as session:
        assert await session.wait_attempt(WAIT)
        with pytest.raises(DownstreamLost) as lost:
            await call(session)
    assert lost.value.reason == reason


@pytest.mark.parametrize(("sent", "expected"), [(True, DownstreamLost), (False, DownstreamUnavailable)])
async def test_the_call_timeout_is_lost_once_sent_and_unavailable_before(
    tmp_path: Path, sent: bool, expected: type[Exception]
) -> None:
    async with running(OpenAPISession(spec(tmp_path), transport=Scripted(None, sent=sent))) as session:
        assert await session.wait_attempt(WAIT)
        with anyio.fail_after(WAIT), pytest.raises(expected):
            await call(session, timeout=0.05)


async def test_the_manifest_headers_and_the_key_ride_on_the_request(tmp_path: Path) -> None:
    transport = Scripted(httpx2.ConnectError("refused"), sent=False)
    async with running(OpenAPISession(spec(tmp_path), transport=transport)) as session:
        assert await session.wait_attempt(WAIT)
        with pytest.raises(DownstreamUnavailable):
            await call(session)
    request = transport.requests[0]
    assert request.headers["Authorization"] == "Bearer secret-token-value"
    assert request.headers["Idempotency-Key"] == "k" * 16
    assert request.url == "http://api.test/invoices"


async def test_an_unknown_operation_is_rejected_before_sending(tmp_path: Path) -> None:
    transport = Scripted(None, sent=False)
    async with running(OpenAPISession(spec(tmp_path), transport=transport)) as session:
        assert await session.wait_attempt(WAIT)
        with pytest.raises(DownstreamRejected):
            await session.call_tool("refundAll", {}, timeout=1)
    assert transport.requests == []


async def test_a_broken_document_is_not_ready_and_a_fixed_one_is_picked_up(tmp_path: Path) -> None:
    document = tmp_path / "api.yaml"
    document.write_text("openapi: 3.1.0\ninfo: {title: t}\npaths: {}\n")
    session = OpenAPISession(spec(tmp_path, document), backoff_initial=0.01, backoff_max=0.05)
    async with running(session):
        assert not await session.wait_attempt(WAIT)
        assert session.last_error is not None and "'version' is a required property" in session.last_error
        with pytest.raises(DownstreamUnavailable, match="version"):
            await call(session)
        document.write_text(DOCUMENT.read_text())
        with anyio.fail_after(WAIT):
            while not session.ready:
                await session.wait_attempt(WAIT)
    assert "createInvoice" in {tool["name"] for tool in session.tools}
    assert session.last_error is None


def test_the_pool_makes_an_openapi_session_for_an_openapi_manifest(tmp_path: Path) -> None:
    assert isinstance(session_for(spec(tmp_path)), OpenAPISession)


@pytest.mark.parametrize(
    "name",
    [
        "call_tool",
        "run",
        "wait_attempt",
        "list_resources",
        "list_resource_templates",
        "list_prompts",
        "read_resource",
        "get_prompt",
    ],
)
def test_it_offers_the_same_calls_as_an_mcp_downstream_session(name: str) -> None:
    """The pool, the catalog, ``check`` and the call path treat both kinds alike."""
    ours, theirs = (
        inspect.signature(getattr(OpenAPISession, name)),
        inspect.signature(getattr(DownstreamSession, name)),
    )
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.kind for p in ours.parameters.values()] == [p.kind for p in theirs.parameters.values()]


def test_it_has_the_same_attributes_as_an_mcp_downstream_session(tmp_path: Path) -> None:
    ours = OpenAPISession(spec(tmp_path))
    theirs = DownstreamSession(spec(tmp_path))
    for name in (
        "spec",
        "name",
        "tools",
        "ready",
        "last_error",
        "resources",
        "resource_templates",
        "prompts",
    ):
        assert hasattr(ours, name) and hasattr(theirs, name), name
