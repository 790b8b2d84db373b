"""The end of the gateway's stdin over stdio: what was asked before it is still answered.

A script that pipes its requests in (``printf ... | idem-gateway serve``, or ``< requests.jsonl``)
closes stdin at once and reads the answers after; the gateway used to cancel every request in
flight at that end, so a keyed call that ran downstream was recorded but never answered. Here
the call is held downstream (``slow_op`` waits for a gate file) until the gateway has said it
read the end of its input, so the end observably comes first; only then is the gate opened.

A question the gateway put to the client (an approval, by elicitation) can never be answered
once stdin has ended: it fails at once, and the call gets its refusal, instead of waiting out
the grace the gateway gives its own answers.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.abc import Process
from mcp.shared.message import SessionMessage

from gateway import meta
from gateway.server.stdio import STDIN_ENDED_GRACE, STDIN_ENDED_LOG, Unanswered
from tests.support import Setup, call_line, executions, initialize_lines, new_key, read_ledger, wait_for

WAIT = 30.0  # after the end of input
assert WAIT < STDIN_ENDED_GRACE  # "at once" below means well within the grace
STARTUP = 90.0  # a gateway and its downstream starting on a loaded machine


class Output:
    """The gateway's stdout, a JSON-RPC message per line, read as it comes."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self.stdout = process.stdout
        self.buffer = b""
        self.messages: list[dict[str, Any]] = []
        self.ended = False

    async def _more(self) -> None:
        try:
            self.buffer += await self.stdout.receive()
        except anyio.EndOfStream:
            self.ended = True
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        self.messages += [json.loads(text) for text in lines]

    async def until(self, predicate: Any) -> dict[str, Any]:
        with anyio.fail_after(STARTUP):
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                assert not self.ended, f"stdout ended without it: {self.messages}"
                await self._more()

    async def to_the_end(self) -> list[dict[str, Any]]:
        with anyio.fail_after(WAIT):
            while not self.ended:
                await self._more()
        assert self.buffer == b"", "stdout ends in the middle of a line"
        return self.messages


@asynccontextmanager
async def gateway(setup: Setup, stdin: Any) -> AsyncIterator[Process]:
    params = setup.gateway_params()
    with (setup.tmp / "gateway.stderr").open("wb") as errlog:
        process = await anyio.open_process(
            [params.command, *params.args], stdin=stdin, stdout=subprocess.PIPE, stderr=errlog, cwd=params.cwd
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True), anyio.move_on_after(WAIT):
                await process.wait()


def said_stdin_ended(setup: Setup) -> bool:
    return STDIN_ENDED_LOG in (setup.tmp / "gateway.stderr").read_text(errors="replace")


def finished(setup: Setup) -> list[dict[str, Any]]:
    return [entry for entry in read_ledger(setup.ledger) if entry.get("phase") == "finished"]


def answer(messages: list[dict[str, Any]], ident: int) -> dict[str, Any]:
    answers = [m for m in messages if m.get("id") == ident and "method" not in m]
    assert len(answers) == 1, messages
    return answers[0]


@pytest.mark.parametrize("stdin_is", ["pipe", "file"])
async def test_a_call_in_flight_when_stdin_ends_is_answered_before_the_gateway_exits(
    tmp_path: Path, stdin_is: str
) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    gate = tmp_path / "gate"
    held = {"label": "piped", "gate_file": str(gate), "idempotency_key": new_key()}
    requests = initialize_lines() + call_line(2, "slow_op", held)
    if stdin_is == "file":  # a regular file: the gateway reads it with the SDK's own transport
        (tmp_path / "requests.jsonl").write_bytes(requests)
        source: Any = (tmp_path / "requests.jsonl").open("rb")
    else:
        source = subprocess.PIPE
    with anyio.fail_after(STARTUP + 2 * WAIT):
        async with gateway(setup, source) as process:
            if process.stdin is not None:
                await process.stdin.send(requests)
                await process.stdin.aclose()
            await wait_for(lambda: said_stdin_ended(setup), timeout=STARTUP)
            assert not finished(setup)  # held downstream: the end came first
            gate.touch()
            messages = await Output(process).to_the_end()
            assert await process.wait() == 0
    result = answer(messages, 2)["result"]
    assert result["_meta"][meta.OUTCOME] == "executed"
    assert len(executions(setup.ledger, "slow_op")) == 1 and len(finished(setup)) == 1


async def test_a_question_to_the_client_pending_when_stdin_ends_fails_at_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest(tools={"create_invoice": {"approve": True}})
    invoice = {"customer": "acme", "amount": 12.5, "idempotency_key": new_key()}
    with anyio.fail_after(STARTUP + 2 * WAIT):
        async with gateway(setup, subprocess.PIPE) as process:
            assert process.stdin is not None
            output = Output(process)
            await process.stdin.send(
                initialize_lines({"elicitation": {}}) + call_line(2, "create_invoice", invoice)
            )
            await output.until(lambda m: m.get("method") == "elicitation/create")
            await process.stdin.aclose()  # the question can never be answered now
            messages = await output.to_the_end()
            assert await process.wait() == 0
    result = answer(messages, 2)["result"]
    assert result["isError"] is True
    assert result["_meta"][meta.ERROR]["code"] == "approval_unavailable"
    assert said_stdin_ended(setup)
    assert executions(setup.ledger, "create_invoice") == []


# ---- the bookkeeping, in process --------------------------------------------------------------------


def request(ident: int, method: str = "tools/call") -> SessionMessage:
    return SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=ident, method=method, params={}))


def response(ident: int) -> SessionMessage:
    return SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=ident, result={}))


def cancelled(ident: int) -> SessionMessage:
    params = {"requestId": ident, "reason": "the user gave up"}
    return SessionMessage(
        types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params=params)
    )


async def ended(items: list[SessionMessage]) -> tuple[Unanswered, Any, Any, Any]:
    """A reader over ``items`` (read) then the end of input, a writer, and the ``Unanswered``."""
    seen = Unanswered(grace=WAIT)
    inbox_in, inbox_out = anyio.create_memory_object_stream[SessionMessage | Exception](len(items))
    for item in items:
        inbox_in.send_nowait(item)
    inbox_in.close()
    outbox_in, _outbox = anyio.create_memory_object_stream[SessionMessage](16)
    reader, writer = seen.reader(inbox_out), seen.writer(outbox_in)
    for _ in items:
        await reader.receive()
    return seen, reader, writer, _outbox  # the outbox's receiving end is kept alive by the caller


async def test_a_request_the_client_cancelled_or_a_standing_listen_is_not_waited_for() -> None:
    seen, reader, _, _outbox = await ended([request(1), request(2, "subscriptions/listen"), cancelled(1)])
    with anyio.fail_after(WAIT / 2), pytest.raises(anyio.EndOfStream):
        await reader.receive()  # nothing to answer: the end comes through at once
    assert seen.ended


async def test_at_the_end_each_question_still_open_gets_an_error_and_no_new_one_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.server.stdio")
    seen, reader, writer, _outbox = await ended([request(7)])
    await writer.send(request(1, "elicitation/create"))  # our questions, asked before the end
    await writer.send(request(2, "sampling/createMessage"))
    errors = [await reader.receive(), await reader.receive()]
    codes = {
        e.message.id: e.message.error.code
        for e in errors
        if isinstance(e, SessionMessage) and isinstance(e.message, types.JSONRPCError)
    }
    assert codes == {1: types.CONNECTION_CLOSED, 2: types.CONNECTION_CLOSED}
    with pytest.raises(anyio.BrokenResourceError):
        await writer.send(request(3, "elicitation/create"))  # after the end: nobody can answer it
    done: list[str] = []

    async def until_the_end() -> None:
        with pytest.raises(anyio.EndOfStream):
            await reader.receive()
        done.append("end")

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(until_the_end)
            await wait_for(lambda: "answering 1 request(s)" in caplog.text, timeout=WAIT)
            assert done == []  # the reader holds the end while the client's request 7 is open
            await writer.send(response(7))
    assert done == ["end"] and seen.ended
