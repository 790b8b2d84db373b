"""REST endpoints as keyed tools: the real gateway (``python -m gateway serve``) over a real REST API.

The API (``examples/invoices_api.py``) runs in its own process on loopback, dedupes on the
``Idempotency-Key`` header like the IETF draft, and writes every request it receives to a
ledger before answering: a count of ledger lines is a count of what reached it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from gateway.idempotency.keys import KEY_PATTERN
from tests.openapi.openapi_kit import GATEWAY_ENV, TOKEN, free_port, invoices_api, write_openapi_manifest
from tests.support import Setup, error_code, forwarded_key, meta_of, new_key, outcome, wait_for

WAIT = 60.0
INVOICE = {"customer": "acme", "amount": 12.5}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")


@asynccontextmanager
async def gateway(setup: Setup, *, log_level: str = "INFO") -> AsyncIterator[Client]:
    """A real MCP client on a real gateway subprocess; its log goes to ``gateway.stderr``."""
    params = setup.gateway_params(env={**GATEWAY_ENV, "IDEM_GATEWAY_LOG_LEVEL": log_level})
    with (setup.tmp / "gateway.stderr").open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="auto", cache=None) as client:
            yield client


async def create(client: Client, key: str, **extra: Any) -> Any:
    return await client.call_tool("createInvoice", {**INVOICE, "idempotency_key": key, **extra})


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


# ------------------------------------------------------------------------------ tools/list


async def test_tools_list_shows_each_operation_with_its_schemas_and_class(setup: Setup) -> None:
    write_openapi_manifest(setup.manifests, base_url=f"http://127.0.0.1:{free_port()}")
    with anyio.fail_after(WAIT):
        async with gateway(setup) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(listed) == {
        "createInvoice",
        "getInvoice",
        "health",
        "listInvoices",
        "post_invoices_invoice_id_send",  # no operationId: named from method and path
        "voidInvoice",
    }
    create_tool = listed["createInvoice"]
    props = create_tool.input_schema["properties"]
    # Body properties are arguments; invoice_id and status are readOnly; the key header is the gateway's.
    assert set(props) == {"X-Trace-Id", "customer", "amount", "currency", "memo", "idempotency_key"}
    assert create_tool.input_schema["required"] == ["customer", "amount", "idempotency_key"]
    assert props["idempotency_key"]["pattern"] == KEY_PATTERN
    assert props["memo"] == {"type": ["string", "null"]}
    assert create_tool.output_schema is not None
    assert create_tool.output_schema["required"] == ["invoice_id", "customer", "amount", "status"]
    assert create_tool.annotations is not None
    assert (create_tool.annotations.read_only_hint, create_tool.annotations.idempotent_hint) == (False, True)
    assert "idempotency_key" in (create_tool.description or "")

    void = listed["voidInvoice"]
    assert void.input_schema["required"] == ["invoice_id", "idempotency_key"]
    assert void.annotations is not None and void.annotations.destructive_hint is True

    for name in ("getInvoice", "listInvoices", "health"):
        tool = listed[name]
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
        assert "idempotency_key" not in tool.input_schema["properties"], name
    assert listed["listInvoices"].input_schema["properties"]["status"]["items"]["enum"] == ["open", "void"]
    assert listed["health"].output_schema is None  # text/plain


# ------------------------------------------------------------------------------ executing


async def test_a_post_runs_once_and_its_retries_replay_it(setup: Setup) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(setup.manifests, base_url=api.base_url)
        key = new_key()
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                first = await create(client, key, **{"X-Trace-Id": "trace-1"})
                retries = [await create(client, key, **{"X-Trace-Id": "trace-1"}) for _ in range(3)]
                fetched = await client.call_tool(
                    "getInvoice", {"invoice_id": first.structured_content["invoice_id"]}
                )
    assert outcome(first) == "executed" and not first.is_error
    assert [outcome(r) for r in retries] == ["replayed"] * 3
    assert all(r.structured_content == first.structured_content for r in retries)
    assert first.structured_content["customer"] == "acme"
    assert meta_of(first)["idem-gateway/http-status"] == 201
    requests = api.requests("createInvoice")
    assert len(requests) == 1  # the retries never reached the API
    assert requests[0]["outcome"] == "executed"
    assert requests[0]["key"] == forwarded_key(key)  # the key, scoped to the principal, as the header
    assert requests[0]["authorized"] is True  # the manifest's ${INVOICES_TOKEN} header
    assert requests[0]["trace_id"] == "trace-1"  # a header parameter
    assert fetched.structured_content == first.structured_content
    assert api.requests("getInvoice")[0]["key"] is None  # a read-only call carries no key


async def test_connection_refused_is_downstream_unavailable_and_releases_the_key(setup: Setup) -> None:
    port = free_port()
    write_openapi_manifest(setup.manifests, base_url=f"http://127.0.0.1:{port}")
    key = new_key()
    with anyio.fail_after(WAIT):
        async with gateway(setup) as client:
            refused = await create(client, key)
            async with invoices_api(setup.tmp, port=port) as api:
                retried = await create(client, key)
    assert error_code(refused) == "downstream_unavailable" and refused.is_error
    assert outcome(retried) == "executed" and not retried.is_error
    assert [r["key"] for r in api.executions("createInvoice")] == [forwarded_key(key)]


@pytest.mark.parametrize("fault", ["error_after_effect", "crash_after_effect"])
async def test_a_5xx_or_a_dropped_connection_is_unknown_and_the_retry_resends_the_key(
    setup: Setup, fault: str
) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(setup.manifests, base_url=api.base_url)
        key = new_key()
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                await api.fault("createInvoice", fault)
                lost = await create(client, key)
                if fault == "crash_after_effect":
                    assert await api.exited() == 3
                    await api.start()  # same port, same state: the API remembers the key
                resent = await create(client, key)
                replayed = await create(client, key)
    assert error_code(lost) == "outcome_unknown"
    assert outcome(resent) == "executed" and not resent.is_error
    assert outcome(replayed) == "replayed"
    assert resent.structured_content == replayed.structured_content
    # Ran once; the re-send with the same key got the API's stored answer.
    assert len(api.executions("createInvoice")) == 1
    assert [(r["outcome"], r["key"]) for r in api.requests("createInvoice")] == [
        ("executed", forwarded_key(key)),
        ("replayed", forwarded_key(key)),
    ]
    assert api.executions("createInvoice")[0]["status"] == 201


async def test_a_timeout_is_unknown_and_a_retry_while_the_api_still_runs_it_gets_its_409(
    setup: Setup,
) -> None:
    gate = setup.tmp / "gate"
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(setup.manifests, base_url=api.base_url, server={"timeout": "2s"})
        key = new_key()
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                await api.fault("createInvoice", "hold", gate=str(gate))
                timed_out = await create(client, key)  # the API holds it until the gate opens
                await wait_for(lambda: bool(api.requests("createInvoice")), timeout=WAIT)
                while_running = await create(client, key)
                gate.touch()
                await wait_for(lambda: bool(api.executions("createInvoice")), timeout=WAIT)
                done = await create(client, key)
    assert error_code(timed_out) == "outcome_unknown"
    assert error_code(while_running) == "outcome_unknown"  # the API's 409: it is still running there
    assert outcome(done) == "executed" and not done.is_error
    assert [r["outcome"] for r in api.requests("createInvoice")] == [
        "held",
        "in_progress",
        "executed",
        "replayed",
    ]
    assert len(api.executions("createInvoice")) == 1


async def test_a_429_is_unknown_and_the_retry_resends_the_key(setup: Setup) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(setup.manifests, base_url=api.base_url)
        key = new_key()
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                await api.fault("createInvoice", "rate_limit")
                limited = await create(client, key)
                retried = await create(client, key)
    assert error_code(limited) == "outcome_unknown"
    assert outcome(retried) == "executed" and not retried.is_error
    assert [r["outcome"] for r in api.requests("createInvoice")] == ["rate_limited", "executed"]


@pytest.mark.parametrize("store_errors", [True, False])
async def test_a_4xx_is_the_apis_answer_stored_or_released_per_store_errors(
    setup: Setup, store_errors: bool
) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(
            setup.manifests, base_url=api.base_url, defaults={"store_errors": store_errors}
        )
        key = new_key()
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                args = {"invoice_id": "inv_missing", "idempotency_key": key}
                first = await client.call_tool("voidInvoice", args)
                again = await client.call_tool("voidInvoice", args)
    assert first.is_error and outcome(first) == "executed"
    assert "HTTP 404" in text_of(first)
    assert meta_of(first)["idem-gateway/http-status"] == 404
    assert again.is_error
    if store_errors:
        assert outcome(again) == "replayed"
        assert len(api.requests("voidInvoice")) == 1
    else:
        assert outcome(again) == "executed"
        assert len(api.requests("voidInvoice")) == 2


async def test_a_409_that_is_not_about_the_key_is_the_apis_answer(setup: Setup) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(setup.manifests, base_url=api.base_url)
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                invoice_id = (await create(client, new_key())).structured_content["invoice_id"]
                voided = await client.call_tool(
                    "voidInvoice", {"invoice_id": invoice_id, "idempotency_key": new_key()}
                )
                key = new_key()
                again = await client.call_tool(
                    "voidInvoice", {"invoice_id": invoice_id, "idempotency_key": key}
                )
                retried = await client.call_tool(
                    "voidInvoice", {"invoice_id": invoice_id, "idempotency_key": key}
                )
    assert not voided.is_error and voided.structured_content["status"] == "void"
    assert again.is_error and outcome(again) == "executed" and "already void" in text_of(again)
    assert error_code(again) is None
    assert outcome(retried) == "replayed"
    assert [r["outcome"] for r in api.requests("voidInvoice")] == ["executed", "refused"]


async def test_a_422_about_the_key_is_relayed_as_idempotency_key_conflict(setup: Setup) -> None:
    """The API holds the key for another payload: the gateway could not see it (``memo`` is left
    out of its fingerprint), the API could, and says so."""
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(
            setup.manifests,
            base_url=api.base_url,
            tools={"createInvoice": {"fingerprint_exclude": ["memo"]}},
        )
        key = new_key()
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                await api.fault("createInvoice", "error_after_effect")
                lost = await create(client, key, memo="first")
                other = await create(client, key, memo="second")
    assert error_code(lost) == "outcome_unknown"
    assert other.is_error and error_code(other) == "idempotency_key_conflict"
    assert meta_of(other)["idem-gateway/error"]["http_status"] == 422
    assert [r["outcome"] for r in api.requests("createInvoice")] == ["executed", "conflict"]


async def test_the_document_can_be_fetched_from_the_api_with_the_manifests_headers(setup: Setup) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(
            setup.manifests,
            base_url=api.base_url,
            spec=f"{api.base_url}/openapi.yaml",  # it answers 401 without the bearer token
            server={"operations": ["createInvoice", "listInvoices"]},
        )
        with anyio.fail_after(WAIT):
            async with gateway(setup) as client:
                names = sorted(tool.name for tool in (await client.list_tools()).tools)
                created = await create(client, new_key())
                listed = await client.call_tool("listInvoices", {"customer": "acme", "status": ["open"]})
    assert names == ["createInvoice", "listInvoices"]  # the allow-list
    assert outcome(created) == "executed"
    assert [i["invoice_id"] for i in listed.structured_content["invoices"]] == [
        created.structured_content["invoice_id"]
    ]
    assert api.requests("listInvoices")[0]["query"] == "customer=acme&status=open"


async def test_header_secrets_never_reach_the_logs_errors_or_store(setup: Setup) -> None:
    async with invoices_api(setup.tmp) as api:
        write_openapi_manifest(setup.manifests, base_url=api.base_url)
        with anyio.fail_after(WAIT):
            async with gateway(setup, log_level="DEBUG") as client:
                await api.fault("listInvoices", "echo_error")  # a 500 whose body quotes our Authorization
                echoed = await client.call_tool("listInvoices", {})
                await api.fault("createInvoice", "error_after_effect")
                lost = await create(client, new_key())
                created = await create(client, new_key())
    assert echoed.is_error and "HTTP 500" in text_of(echoed)
    assert "serving ***" in text_of(echoed)  # the manifest's header value, masked
    assert TOKEN not in text_of(echoed) and TOKEN not in text_of(lost)
    assert outcome(created) == "executed"
    log = (setup.tmp / "gateway.stderr").read_text()
    assert "HTTP 500" in log and "DEBUG" in log  # it did log, verbosely, about these calls
    assert TOKEN not in log
    stored = b"".join(p.read_bytes() for p in setup.tmp.glob("gateway.db*"))
    assert TOKEN.encode() not in stored


# ---------------------------------------------------------------------------------- check


def check(setup: Setup) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--manifests", str(setup.manifests)],
        cwd=setup.tmp,
        env={**os.environ, **GATEWAY_ENV},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def test_check_lists_the_generated_tools_and_their_classes(setup: Setup) -> None:
    write_openapi_manifest(setup.manifests, base_url=f"http://127.0.0.1:{free_port()}")
    done = check(setup)
    assert done.returncode == 0, done.stderr
    rows = {row.split()[0]: row.split()[1:] for row in done.stdout.splitlines()[1:]}
    assert rows["createInvoice"][:4] == ["invoices", "side-effecting", "1d", "header:Idempotency-Key"]
    assert rows["voidInvoice"][:2] == ["invoices", "side-effecting"]
    assert rows["getInvoice"][:2] == ["invoices", "read-only"]
    assert rows["listInvoices"][:2] == ["invoices", "read-only"]
    assert "post_invoices_invoice_id_send" in rows
    assert "uploadAttachment" not in rows
    skipped = (
        "POST /invoices/{invoice_id}/attachments (uploadAttachment): skipped: its request body is not JSON"
    )
    assert f"warning: invoices.toml: server.spec: {skipped} (multipart/form-data)" in done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_check_fails_on_an_allow_listed_operation_the_document_lacks(setup: Setup) -> None:
    base_url = f"http://127.0.0.1:{free_port()}"
    write_openapi_manifest(
        setup.manifests, base_url=base_url, server={"operations": ["getInvoice", "refundAll"]}
    )
    done = check(setup)
    assert done.returncode == 1
    assert [row.split()[0] for row in done.stdout.splitlines()[1:]] == ["getInvoice"]
    assert (
        "error: invoices.toml: server.operations: 'refundAll' is not an operation of the document"
        in done.stderr
    )


def test_check_fails_on_an_invalid_document_and_says_why(setup: Setup) -> None:
    broken = setup.tmp / "broken.yaml"
    broken.write_text("openapi: 3.1.0\ninfo: {title: t}\npaths: {}\n")
    write_openapi_manifest(setup.manifests, base_url=f"http://127.0.0.1:{free_port()}", spec=str(broken))
    done = check(setup)
    assert done.returncode == 1
    assert "invoices.toml: server: downstream 'invoices' did not start" in done.stderr
    assert "invalid OpenAPI 3.1 document: info: 'version' is a required property" in done.stderr
