"""``idem-gateway serve`` over stdio as a process, and ``idem-gateway check`` as a command.

The gateway is started here with pipes this test owns, so its raw stdout bytes are recorded
while a real ``mcp.Client`` drives it through them: every byte must be a JSON-RPC message.
The downstream's pid comes from the example server's ``whoami`` tool; after the gateway ends
(SIGTERM, or its stdin closing) that process must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.abc import Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import Client
from mcp.shared.message import SessionMessage

from tests.support import REPO, Setup, alive, new_key, outcome, wait_for

WAIT = 30.0

# The stream pair a client transport yields, spelled here: the SDK names it only privately.
Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    return made


class PipedGateway:
    """A gateway subprocess whose stdin and stdout go through this test; stdout is kept raw."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.raw = bytearray()

    @asynccontextmanager
    async def transport(self) -> AsyncIterator[Streams]:
        assert self.process.stdout is not None and self.process.stdin is not None
        stdout, stdin = self.process.stdout, self.process.stdin
        to_client, from_gateway = anyio.create_memory_object_stream[SessionMessage | Exception](64)
        to_gateway, from_client = anyio.create_memory_object_stream[SessionMessage](64)

        async def pump_out() -> None:
            buffer = b""
            async with to_client:
                async for chunk in stdout:
                    self.raw.extend(chunk)
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        try:
                            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                        except ValueError as exc:  # asserted on afterwards, from the raw bytes
                            await to_client.send(exc)
                            continue
                        await to_client.send(SessionMessage(message))

        async def pump_in() -> None:
            async with from_client:
                async for item in from_client:
                    data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send((data + "\n").encode())

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_out)
            tg.start_soon(pump_in)
            try:
                yield from_gateway, to_gateway
            finally:
                tg.cancel_scope.cancel()


@asynccontextmanager
async def piped_gateway(setup: Setup) -> AsyncIterator[PipedGateway]:
    params = setup.gateway_params()
    with (setup.tmp / "gateway.stderr").open("wb") as errlog:
        process = await anyio.open_process(
            [params.command, *params.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
            cwd=params.cwd,
            env=dict(params.env or {}),
        )
        try:
            yield PipedGateway(process)
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True), anyio.move_on_after(WAIT):
                await process.wait()


async def downstream_pid(client: Client) -> int:
    result = await client.call_tool("whoami", {"idempotency_key": new_key()})
    pid = int(result.structured_content["pid"])
    assert alive(pid)
    return pid


async def test_stdout_carries_nothing_but_json_rpc_messages(setup: Setup) -> None:
    with anyio.fail_after(60):
        async with piped_gateway(setup) as gateway:
            async with Client(gateway.transport(), cache=None) as client:
                listed = await client.list_tools()
                key = new_key()
                args = {"customer": "acme", "amount": 12.5, "idempotency_key": key}
                first = await client.call_tool("create_invoice", args)
                again = await client.call_tool("create_invoice", args)
                failed = await client.call_tool(
                    "fail_op", {"reason": "declined", "idempotency_key": new_key()}
                )
                # A downstream that dies mid-call: its stderr and the restart logs must stay off stdout.
                await client.call_tool("crash_op", {"idempotency_key": new_key()})
                await client.call_tool("list_invoices", {})
    assert {"create_invoice", "list_invoices"} <= {t.name for t in listed.tools}
    assert (outcome(first), outcome(again), failed.is_error) == ("executed", "replayed", True)
    lines = bytes(gateway.raw).split(b"\n")
    assert lines[-1] == b"", "stdout ends in the middle of a line"
    assert len(lines) > 6
    for line in lines[:-1]:
        message = json.loads(line)
        assert message.get("jsonrpc") == "2.0", line
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    # The logs went somewhere: stderr.
    assert (setup.tmp / "gateway.stderr").stat().st_size > 0


async def test_sigterm_stops_the_gateway_and_its_downstream(setup: Setup) -> None:
    with anyio.fail_after(60):
        async with piped_gateway(setup) as gateway:
            async with Client(gateway.transport(), cache=None) as client:
                pid = await downstream_pid(client)
                gateway.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(WAIT):
                    await gateway.process.wait()
        await wait_for(lambda: not alive(pid), timeout=WAIT)
    assert gateway.process.returncode == 0


async def test_closing_stdin_stops_the_gateway_and_its_downstream(setup: Setup) -> None:
    with anyio.fail_after(60):
        async with piped_gateway(setup) as gateway:
            async with Client(gateway.transport(), cache=None) as client:
                pid = await downstream_pid(client)
                assert gateway.process.stdin is not None
                await gateway.process.stdin.aclose()
                with anyio.fail_after(WAIT):
                    await gateway.process.wait()
        await wait_for(lambda: not alive(pid), timeout=WAIT)
    assert gateway.process.returncode == 0


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_on_the_repo_manifests_prints_the_tool_table(tmp_path: Path) -> None:
    done = run_cli(
        "check",
        "--manifests",
        str(REPO / "tool_manifests"),
        cwd=tmp_path,
        env={"PAYMENTS_LEDGER": str(tmp_path / "ledger.jsonl")},
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0][:3] == ["TOOL", "SERVER", "CLASS"]
    table: dict[str, Any] = {row[0]: row[1:] for row in rows[1:]}
    assert table["create_invoice"][:2] == ["payments", "side-effecting"]
    assert table["list_invoices"][:2] == ["payments", "read-only"]
    assert "crash_op" not in table  # expose = "listed" hides the test hooks


def test_check_on_a_broken_folder_lists_every_error_and_fails(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "bad_toml.toml").write_text("[server\nname = 'x'\n")
    (folder / "unknown_key.toml").write_text('[server]\nname = "one"\ncommand = "python"\ncolour = "blue"\n')
    (folder / "bad_duration.toml").write_text(
        '[server]\nname = "two"\ncommand = "python"\ntimeout = "soon"\n'
    )
    (folder / "unset_var.toml").write_text(
        '[server]\nname = "three"\ncommand = "python"\nenv = { T = "${IDEM_TEST_SURELY_UNSET_VAR}" }\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "IDEM_TEST_SURELY_UNSET_VAR"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--manifests", str(folder)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    named = {line.removeprefix("error: ").split(":", 1)[0] for line in errors}
    assert named == {"bad_toml.toml", "unknown_key.toml", "bad_duration.toml", "unset_var.toml"}
    assert any("timeout" in line for line in errors if "bad_duration.toml" in line)
    assert any("colour" in line for line in errors if "unknown_key.toml" in line)
    assert any("IDEM_TEST_SURELY_UNSET_VAR" in line for line in errors if "unset_var.toml" in line)


def test_a_tool_the_downstream_lacks_is_an_error_for_check_and_a_warning_for_serve(tmp_path: Path) -> None:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest(tools={"refund_everything": {"side_effects": True}})
    checked = run_cli("check", "--manifests", str(made.manifests), cwd=tmp_path)
    assert checked.returncode == 1
    assert "payments.toml: tools.refund_everything: the downstream does not offer this tool" in checked.stderr
    # serve: stdin is closed at once, so it starts, warns, and ends its session.
    served = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--manifests", str(made.manifests), "--store", made.store],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 0, served.stderr
    assert "WARNING" in served.stderr and "tools.refund_everything" in served.stderr
    assert served.stdout == ""
