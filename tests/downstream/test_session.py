"""DownstreamSession and DownstreamPool against the example payments server, as a real subprocess.

Every wait is bounded; nothing sleeps to let things settle: state changes are awaited,
and a call is held mid-flight by a gate file the test creates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.downstream import (
    DownstreamLost,
    DownstreamPool,
    DownstreamRejected,
    DownstreamSession,
    DownstreamUnavailable,
    State,
)
from gateway.manifests.models import ServerSpec
from tests.support import DEAF, alive, read_ledger, wait_for

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "examples" / "payments_server.py"
sys.path.insert(0, str(ROOT / "examples"))
from payments_server import PIXEL_PNG  # noqa: E402

BOUND = 30.0  # generous upper bound for every wait that involves a subprocess


def stdio_spec(tmp_path: Path, name: str = "payments", **overrides: Any) -> ServerSpec:
    fields: dict[str, Any] = {
        "name": name,
        "source": tmp_path / f"{name}.toml",
        "transport": "stdio",
        "command": sys.executable,
        "args": (str(SERVER),),
        "env": {"PAYMENTS_LEDGER": str(tmp_path / "ledger.jsonl")},
        "cwd": tmp_path,
        "timeout": 10.0,
    }
    fields.update(overrides)
    return ServerSpec(**fields)


def ledger(tmp_path: Path) -> list[dict[str, Any]]:
    return read_ledger(tmp_path / "ledger.jsonl")


@asynccontextmanager
async def running(session: DownstreamSession) -> AsyncIterator[DownstreamSession]:
    async with anyio.create_task_group() as tg:
        await tg.start(session.run)
        assert await session.wait_ready(BOUND), session.last_error
        yield session
        tg.cancel_scope.cancel()


async def whoami(session: DownstreamSession) -> int:
    result = await session.call_tool("whoami", {}, timeout=BOUND)
    return int(result["structuredContent"]["pid"])


class FakeClock:
    """Decides when a reconnect is due; the test moves it, nothing waits for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_tools_are_listed_as_the_downstream_sent_them(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            by_name = {tool["name"]: tool for tool in session.tools}
            assert {"create_invoice", "send_email", "get_invoice", "list_invoices", "native_charge"} <= set(
                by_name
            )
            assert by_name["list_invoices"]["annotations"]["readOnlyHint"] is True
            assert by_name["create_invoice"]["outputSchema"]["properties"]["invoice_id"]["type"] == "string"
            assert by_name["create_invoice"]["inputSchema"]["required"] == ["customer", "amount"]


async def test_a_call_is_forwarded_once_and_its_result_comes_back_verbatim(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            arguments = {"customer": "acme", "amount": 12.5, "card_number": "4242"}
            result = await session.call_tool("create_invoice", arguments, timeout=BOUND)
    structured = result["structuredContent"]
    assert structured["customer"] == "acme"
    assert structured["amount"] == 12.5
    assert structured["currency"] == "EUR"
    assert result["isError"] is False
    assert json.loads(result["content"][0]["text"]) == structured
    lines = ledger(tmp_path)
    assert [line["tool"] for line in lines] == ["create_invoice"]
    assert lines[0]["result"]["invoice_id"] == structured["invoice_id"]
    assert arguments == {"customer": "acme", "amount": 12.5, "card_number": "4242"}  # untouched


async def test_meta_reaches_the_downstream_without_touching_the_callers_dict(tmp_path: Path) -> None:
    meta = {"idem-gateway/idempotency-key": "k" * 20}
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            result = await session.call_tool(
                "send_email", {"to": "a@b", "subject": "s", "body": "b"}, meta=meta, timeout=BOUND
            )
    assert result["isError"] is False
    assert meta == {"idem-gateway/idempotency-key": "k" * 20}


async def test_a_tool_error_is_a_result_not_an_exception(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            result = await session.call_tool("fail_op", {"reason": "card declined"}, timeout=BOUND)
    assert result["isError"] is True
    assert result["content"] == [{"type": "text", "text": "failed: card declined"}]
    assert [line["tool"] for line in ledger(tmp_path)] == ["fail_op"]


async def test_image_and_embedded_resource_content_is_intact(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            result = await session.call_tool("image_op", {}, timeout=BOUND)
    image, text_resource, blob_resource = result["content"]
    assert image == {"type": "image", "data": PIXEL_PNG, "mimeType": "image/png"}
    assert text_resource["resource"] == {
        "uri": "ledger://receipt",
        "mimeType": "text/plain",
        "text": "receipt",
    }
    assert blob_resource["resource"]["blob"] == PIXEL_PNG


async def test_an_unknown_tool_is_rejected_by_the_downstream(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            try:
                result = await session.call_tool("no_such_tool", {}, timeout=BOUND)
            except DownstreamRejected as exc:
                assert exc.code < 0
            else:  # MCPServer reports an unknown tool as a tool error
                assert result["isError"] is True
    assert ledger(tmp_path) == []


async def test_resources_and_prompts_pass_through(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            await session.call_tool("send_email", {"to": "a@b", "subject": "s", "body": "b"}, timeout=BOUND)
            resources = await session.list_resources()
            assert [r["uri"] for r in resources] == ["ledger://summary"]
            read = await session.read_resource("ledger://summary")
            prompts = await session.list_prompts()
            prompt = await session.get_prompt("dunning_letter", {"customer": "acme"})
    assert json.loads(read["contents"][0]["text"]) == {"lines": 1, "by_tool": {"send_email": 1}}
    assert [p["name"] for p in prompts] == ["dunning_letter"]
    assert "acme" in prompt["messages"][0]["content"]["text"]


async def test_a_killed_downstream_is_unavailable_at_once_then_comes_back(tmp_path: Path) -> None:
    clock = FakeClock()
    session = DownstreamSession(
        stdio_spec(tmp_path), backoff_initial=3600.0, inline_connect_timeout=BOUND, clock=clock
    )
    with anyio.fail_after(BOUND):
        async with running(session):
            pid = await whoami(session)
            os.kill(pid, signal.SIGKILL)
            assert await session.wait_state(State.DOWN, timeout=BOUND)

            with pytest.raises(DownstreamUnavailable):
                await session.call_tool(
                    "send_email", {"to": "a@b", "subject": "s", "body": "b"}, timeout=BOUND
                )
            # Refused at once: the backoff has not elapsed, so no connect attempt was even started.
            assert session.state is State.DOWN

            clock.now += 3600.0  # the backoff has elapsed: the next call reconnects inline
            result = await session.call_tool(
                "send_email", {"to": "a@b", "subject": "s", "body": "b"}, timeout=BOUND
            )
            assert result["isError"] is False
            assert await whoami(session) != pid
    assert [line["tool"] for line in ledger(tmp_path)] == ["send_email"]


async def test_a_downstream_that_dies_mid_call_leaves_the_outcome_unknown(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:
            with pytest.raises(DownstreamLost) as lost:
                await session.call_tool("crash_op", {}, timeout=BOUND)
    assert lost.value.reason == "connection_lost"
    assert [line["tool"] for line in ledger(tmp_path)] == ["crash_op"]  # it did run


async def test_a_call_past_its_timeout_is_lost_with_reason_timeout(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # Deaf to the cancellation the timeout sends: the call runs however late the server gets to it.
    deaf = stdio_spec(tmp_path, args=(str(DEAF), sys.executable, str(SERVER)))
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(deaf)) as session:
            with pytest.raises(DownstreamLost) as lost:
                await session.call_tool("slow_op", {"label": "x", "gate_file": str(gate)}, timeout=0.3)
            # The session survives a timeout: the next call works.
            assert (await whoami(session)) > 0
            await wait_for(lambda: bool(ledger(tmp_path)))
    assert lost.value.reason == "timeout"
    assert [line.get("phase") for line in ledger(tmp_path)] == ["started"]


async def test_a_held_call_finishes_when_released(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    results: list[dict[str, Any]] = []
    with anyio.fail_after(BOUND):
        async with running(DownstreamSession(stdio_spec(tmp_path))) as session:

            async def call() -> None:
                results.append(
                    await session.call_tool(
                        "slow_op", {"label": "held", "gate_file": str(gate)}, timeout=BOUND
                    )
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                # A concurrent call is not blocked behind the held one.
                assert await whoami(session) > 0
                gate.touch()
    assert results[0]["content"][0]["text"] == "finished held"
    assert [line.get("phase") for line in ledger(tmp_path)] == ["started", "finished"]


async def test_a_pool_with_a_broken_downstream_still_starts_the_good_one(tmp_path: Path) -> None:
    good = stdio_spec(tmp_path, "good")
    broken = stdio_spec(tmp_path, "broken", command=str(tmp_path / "does-not-exist"))
    started = anyio.current_time()
    with anyio.fail_after(BOUND):
        async with DownstreamPool([good, broken], startup_timeout=BOUND) as pool:
            assert anyio.current_time() - started < BOUND / 2  # did not wait out the bound
            assert pool.sessions["good"].ready
            assert not pool.sessions["broken"].ready
            assert "does-not-exist" in (pool.sessions["broken"].last_error or "")
            result = await pool.sessions["good"].call_tool("list_invoices", {}, timeout=BOUND)
            assert result["isError"] is False
            with pytest.raises(DownstreamUnavailable):
                await pool.sessions["broken"].call_tool("list_invoices", {}, timeout=BOUND)


async def test_no_child_process_survives_the_pool(tmp_path: Path) -> None:
    specs = [stdio_spec(tmp_path, "one"), stdio_spec(tmp_path, "two")]
    with anyio.fail_after(BOUND):
        async with DownstreamPool(specs, startup_timeout=BOUND) as pool:
            pids = [await whoami(session) for session in pool.sessions.values()]
            assert all(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in pids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def http_server(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    env = {**os.environ, "PAYMENTS_LEDGER": str(tmp_path / "ledger.jsonl")}
    process = await anyio.open_process(
        [sys.executable, str(SERVER), "--http", str(port)], env=env, stdout=None, stderr=None
    )
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_http_downstream_forwards_calls_and_per_call_headers(tmp_path: Path) -> None:
    with anyio.fail_after(BOUND):
        async with http_server(tmp_path) as url:
            spec = ServerSpec(
                name="payments_http",
                source=tmp_path / "payments_http.toml",
                transport="http",
                url=url,
                headers={"X-Static": "from-manifest"},
            )
            # The server is still starting: the supervisor retries until it answers.
            session = DownstreamSession(spec, backoff_initial=0.05, backoff_max=0.2)
            async with running(session):
                invoice = await session.call_tool(
                    "create_invoice", {"customer": "c", "amount": 1.0}, timeout=BOUND
                )
                assert invoice["structuredContent"]["customer"] == "c"
                seen = await session.call_tool(
                    "echo_headers", {}, headers={"Idempotency-Key": "key-0123456789abcdef"}, timeout=BOUND
                )
                plain = await session.call_tool("echo_headers", {}, timeout=BOUND)
    headers = seen["structuredContent"]
    assert headers["idempotency-key"] == "key-0123456789abcdef"
    assert headers["x-static"] == "from-manifest"
    assert "idempotency-key" not in plain["structuredContent"]  # per call, not sticky
    assert [line["tool"] for line in ledger(tmp_path)] == ["create_invoice"]


def test_the_public_surface_is_what_init_exports() -> None:
    import gateway.downstream as downstream

    assert all(getattr(downstream, name, None) is not None for name in downstream.__all__)
