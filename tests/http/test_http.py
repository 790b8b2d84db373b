"""``idem-gateway serve --transport http`` as a process, driven by real MCP clients over HTTP.

Each test starts the gateway subprocess on a free port with a manifest for the example server,
waits for ``/healthz`` (bounded poll), and talks to ``/mcp`` with ``mcp.Client`` and a bearer
header, or with plain HTTP where the point is the HTTP answer (401, 413, 421).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.http.kit import (
    INITIALIZE,
    MCP_HEADERS,
    MODERN,
    TOKENS,
    WAIT,
    RoundRobin,
    _stop,
    bearer,
    free_port,
    http_gateway,
    invoice,
    serve_argv,
)
from tests.support import EXAMPLE_SERVER, Setup, error_code, forwarded_key, new_key, outcome, wait_for


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    return made


# ---- the MCP endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_a_retry_over_http_replays_and_the_downstream_runs_once(setup: Setup, mode: str) -> None:
    async with http_gateway(setup) as gw, gw.client("alice", mode=mode) as client:
        with anyio.fail_after(WAIT):
            tools = await client.list_tools()
            assert "create_invoice" in {t.name for t in tools.tools}
            key = new_key()
            first = await invoice(client, key)
            again = await invoice(client, key)
    assert outcome(first) == "executed"
    assert outcome(again) == "replayed"
    assert again.structured_content == first.structured_content
    assert len(setup.executions("create_invoice")) == 1


async def test_mcp_without_a_known_token_gets_401_with_a_bearer_challenge(setup: Setup) -> None:
    async with http_gateway(setup) as gw:
        with anyio.fail_after(WAIT):
            missing = await gw.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
            wrong = await gw.post(
                "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": "Bearer not-a-token"}
            )
            modern = await gw.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={**MCP_HEADERS, "MCP-Protocol-Version": MODERN},
            )
            basic = await gw.post(
                "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": "Basic eDp5"}
            )
    for response in (missing, wrong, modern, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert len(setup.ledger_lines()) == 0


async def test_a_real_client_without_a_token_cannot_connect(setup: Setup) -> None:
    async with http_gateway(setup) as gw:
        with anyio.fail_after(WAIT), pytest.RaisesGroup(MCPError, flatten_subgroups=True):
            async with gw.client(None, mode="legacy") as client:
                await client.list_tools()
    # The SDK surfaces an HTTP error as a generic MCPError; the gateway's access log has the 401.
    assert '"POST /mcp HTTP/1.1" 401' in gw.log.read_text()


async def test_a_session_opened_by_one_principal_is_unknown_to_another(setup: Setup) -> None:
    async with http_gateway(setup) as gw:
        with anyio.fail_after(WAIT):
            opened = await gw.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **bearer("alice")})
            session = opened.headers["mcp-session-id"]
            listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            session_headers = {**MCP_HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
            as_bob = await gw.post("/mcp", json=listing, headers={**session_headers, **bearer("bob")})
            as_alice = await gw.post("/mcp", json=listing, headers={**session_headers, **bearer("alice")})
    assert opened.status_code == 200
    assert as_bob.status_code == 404
    assert as_alice.status_code == 200


async def test_two_principals_have_independent_keys_and_audit(setup: Setup) -> None:
    key = new_key()
    async with http_gateway(setup) as gw, gw.client("alice") as alice, gw.client("bob") as bob:
        with anyio.fail_after(WAIT):
            a_first = await invoice(alice, key)
            a_again = await invoice(alice, key)
            b_first = await invoice(bob, key)
            b_again = await invoice(bob, key)
            audit = {r.uri for r in (await bob.list_resources()).resources}
            assert "audit://events" in audit
            a_events = _events(await alice.read_resource("audit://events"))
            b_events = _events(await bob.read_resource("audit://events"))
    assert [outcome(r) for r in (a_first, a_again, b_first, b_again)] == [
        "executed",
        "replayed",
        "executed",
        "replayed",
    ]
    # B's call with A's key is B's own action: it ran, with B's own stored result.
    assert len(setup.executions("create_invoice")) == 2
    assert b_first.structured_content != a_first.structured_content
    invoices = {e["result"]["invoice_id"] for e in setup.executions("create_invoice")}
    b_invoice = (b_first.structured_content or {}).get("invoice_id")
    a_invoice = (a_first.structured_content or {}).get("invoice_id")
    assert {a_invoice, b_invoice} == invoices
    assert sorted(e["outcome"] for e in a_events) == ["executed", "replayed"]
    assert sorted(e["outcome"] for e in b_events) == ["executed", "replayed"]
    assert not {json.dumps(e, sort_keys=True) for e in a_events} & {
        json.dumps(e, sort_keys=True) for e in b_events
    }


def _events(result: Any) -> list[dict[str, Any]]:
    (content,) = result.contents
    events = json.loads(content.text)["events"]
    assert isinstance(events, list)
    return events


# ---- binding, health, metrics, limits --------------------------------------------------------


async def test_binding_beyond_loopback_without_tokens_refuses_to_start(setup: Setup) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IDEM_GATEWAY_TOKENS"}
    with anyio.fail_after(WAIT):
        ran = await anyio.run_process(
            serve_argv(setup, free_port(), "--host", "0.0.0.0"), check=False, env=env, cwd=setup.tmp
        )
    assert ran.returncode == 1
    stderr = ran.stderr.decode()
    assert "0.0.0.0" in stderr and "token" in stderr
    assert ran.stdout == b""
    assert not setup.ledger_lines()


async def test_a_malformed_tokens_file_refuses_to_start(setup: Setup) -> None:
    tokens = setup.tmp / "bad.toml"
    tokens.write_text('alice = "not-a-hash"\n')
    with anyio.fail_after(WAIT):
        ran = await anyio.run_process(serve_argv(setup, free_port(), "--tokens", str(tokens)), check=False)
    assert ran.returncode == 1
    assert "alice" in ran.stderr.decode() and "sha256sum" in ran.stderr.decode()


async def test_healthz_is_open_and_metrics_need_a_token_when_tokens_are_configured(setup: Setup) -> None:
    async with http_gateway(setup) as gw:
        with anyio.fail_after(WAIT):
            health = await gw.get("/healthz")
            anonymous = await gw.get("/metrics")
            authorized = await gw.get("/metrics", headers=bearer("bob"))
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert anonymous.status_code == 401
    assert authorized.status_code == 200


async def test_metrics_count_calls_by_tool_and_outcome(setup: Setup) -> None:
    async with http_gateway(setup) as gw:
        with anyio.fail_after(WAIT):
            before = await gw.metrics()
            async with gw.client("alice") as client:
                key = new_key()
                assert outcome(await invoice(client, key)) == "executed"
                assert outcome(await invoice(client, key)) == "replayed"
                assert outcome(await invoice(client, key)) == "replayed"
                assert error_code(await invoice(client, None)) == "idempotency_key_missing"
                await client.call_tool("list_invoices", {})
            after = await gw.metrics("bob")
    assert before["idem_gateway_duplicates_prevented_total"] == 0
    calls = 'idem_gateway_calls_total{tool="create_invoice",outcome="%s"}'
    assert after[calls % "executed"] == 1
    assert after[calls % "replayed"] == 2
    assert after[calls % "idempotency_key_missing"] == 1
    assert after['idem_gateway_calls_total{tool="list_invoices",outcome="read_only"}'] == 1
    assert after["idem_gateway_duplicates_prevented_total"] == 2
    hist = 'idem_gateway_call_duration_seconds_%s{tool="create_invoice",outcome="replayed"%s}'
    assert after[hist % ("count", "")] == 2
    assert after[hist % ("bucket", ',le="+Inf"')] == 2
    assert after[hist % ("sum", "")] > 0
    bucket = 'idem_gateway_call_duration_seconds_bucket{tool="create_invoice",outcome="replayed",le='
    buckets = [v for k, v in after.items() if k.startswith(bucket)]
    assert len(buckets) == 14 and buckets == sorted(buckets)  # cumulative, ending at +Inf
    assert after["idem_gateway_waiting"] == 0  # nothing parked once every call returned


async def test_an_oversize_request_gets_413_and_runs_nothing(setup: Setup) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "create_invoice", "arguments": {"customer": "x" * (5 * 1024 * 1024)}},
        }
    )
    async with http_gateway(setup) as gw:
        with anyio.fail_after(WAIT):
            response = await gw.post(
                "/mcp",
                content=body,
                headers={**MCP_HEADERS, "MCP-Protocol-Version": MODERN, **bearer("alice")},
            )
    assert response.status_code == 413
    assert not setup.ledger_lines()


@pytest.mark.parametrize("tokens", [False, True], ids=["loopback-no-tokens", "tokens"])
async def test_a_host_header_that_is_not_loopback_is_rejected(setup: Setup, tokens: bool) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    auth = bearer("alice") if tokens else {}
    async with http_gateway(setup, tokens=tokens) as gw:
        with anyio.fail_after(WAIT):
            legacy = await gw.post(
                "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **auth, "Host": "evil.example"}
            )
            modern = await gw.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={
                    **MCP_HEADERS,
                    **auth,
                    "Host": f"evil.example:{gw.port}",
                    "MCP-Protocol-Version": MODERN,
                },
            )
            origin = await gw.post(
                "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **auth, "Origin": "http://evil.example"}
            )
            fine = await gw.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **auth})
            metrics = await gw.get("/metrics", headers={**auth, "Host": "evil.example"})
    assert legacy.status_code == 421
    assert modern.status_code == 421
    assert origin.status_code == 403
    assert fine.status_code == 200
    if not tokens:
        assert metrics.status_code == 421


async def test_without_tokens_every_call_is_the_configured_principal(setup: Setup) -> None:
    key = new_key()
    async with http_gateway(setup, "--principal", "ops", tokens=False) as gw, gw.client(None) as client:
        with anyio.fail_after(WAIT):
            assert outcome(await invoice(client, key)) == "executed"
    async with setup.client(principal="ops") as stdio:
        with anyio.fail_after(WAIT):
            assert outcome(await invoice(stdio, key)) == "replayed"


# ---- replicas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", MODERN])
async def test_stateless_replicas_serve_one_client_without_sticky_sessions(setup: Setup, mode: str) -> None:
    key = new_key()
    async with (
        http_gateway(setup, "--stateless", name="a") as a,
        http_gateway(setup, "--stateless", name="b") as b,
    ):
        balancer = RoundRobin([a.port, b.port])
        http = httpx2.AsyncClient(transport=balancer, headers=bearer("alice"), timeout=WAIT)
        with anyio.fail_after(WAIT):
            async with (
                http,
                Client(streamable_http_client(a.url, http_client=http), mode=mode, cache=None) as client,
            ):
                await client.list_tools()
                results = [await invoice(client, key) for _ in range(3)]
    assert set(balancer.calls) == {a.port, b.port}
    assert [outcome(r) for r in results] == ["executed", "replayed", "replayed"]
    assert len(setup.executions("create_invoice")) == 1


# ---- an HTTP downstream --------------------------------------------------------------------------


@asynccontextmanager
async def http_downstream(setup: Setup) -> AsyncIterator[str]:
    """``examples/payments_server.py --http PORT``; yields its MCP URL once it accepts connections."""
    port = free_port()
    env = {**os.environ, "PAYMENTS_LEDGER": str(setup.ledger)}
    with (setup.tmp / "downstream.log").open("wb") as errlog:
        process = await anyio.open_process(
            [sys.executable, str(EXAMPLE_SERVER), "--http", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            env=env,
        )
        try:

            def accepting() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            await wait_for(accepting, timeout=WAIT)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            await _stop(process)


async def test_forward_key_header_reaches_an_http_downstream(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    async with http_downstream(setup) as url:
        setup.manifest(
            http_url=url,
            tools={"echo_headers": {"side_effects": True, "forward_key": "header:Idempotency-Key"}},
        )
        key = new_key()
        async with http_gateway(setup) as gw, gw.client("alice") as client:
            with anyio.fail_after(WAIT):
                first = await client.call_tool("echo_headers", {"idempotency_key": key})
                again = await client.call_tool("echo_headers", {"idempotency_key": key})
    assert outcome(first) == "executed"
    assert outcome(again) == "replayed"
    seen = first.structured_content or {}
    seen = seen.get("result", seen)
    assert seen.get("idempotency-key") == forwarded_key(key, "alice")
    # The gateway's own bearer token never travels downstream.
    assert TOKENS["alice"] not in json.dumps(seen)
