"""The stdio client transport against a real child process: what the pipes do to a message.

The transport writes each message from the sending task (at once while the pipe has room,
waiting only when it is full) and reads the child's stdout in the receiving task. These tests
put a real child on the other end and make the pipe do its awkward things on purpose: a line
split across writes, several lines in one write, a line over the limit, a pipe that is full
until the child is told to read. Every wait is bounded; the child acts when the test says so.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from gateway.downstream import transport
from gateway.downstream.transport import stdio_transport
from tests.support import wait_for

BOUND = 20.0

# A child that answers each request line with a result naming the line's id and length, in
# the way the test asks: "split" writes an answer in two writes with the next request between,
# "pair" holds an answer back and writes it with the next one in a single write, "nonl" writes
# it without its newline until the next one. SIGUSR1 must
# arrive before it reads anything (a test that wants a full pipe); every answer is flushed.
CHILD = r"""
import json, os, signal, sys
if os.environ.get("WAIT_FOR_SIGNAL"):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("ready", file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGUSR1})
held = b""
for line in sys.stdin.buffer:
    request = json.loads(line)
    result = {"length": len(line)}
    answer = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode() + b"\n"
    mode = request.get("params", {}).get("mode")
    if mode == "split":
        os.write(1, held + answer[:7])
        held = answer[7:]
    elif mode == "pair":
        if held:
            os.write(1, held)
        held = answer
    elif mode == "nonl":
        os.write(1, held + answer[:-1])
        held = b"\n"
    else:
        os.write(1, held + answer)
        held = b""
"""


def _request(request_id: int, **params: Any) -> SessionMessage:
    return SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method="echo", params=params))


@asynccontextmanager
async def _child(tmp_path: Path, **env: str) -> AsyncIterator[tuple[Any, Any, Path]]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    errlog = tmp_path / "child.err"
    with errlog.open("w") as err:
        argv = [str(script)]
        async with stdio_transport(sys.executable, argv, env=env, cwd=tmp_path, errlog=err) as (r, w):
            yield r, w, errlog


async def _answer(reader: Any) -> dict[str, Any]:
    with anyio.fail_after(BOUND):
        item = await reader.receive()
    assert isinstance(item, SessionMessage), item
    assert isinstance(item.message, types.JSONRPCResponse)
    return {"id": item.message.id, **item.message.result}


async def test_an_answer_split_across_writes_and_two_answers_in_one_write_each_arrive_whole(
    tmp_path: Path,
) -> None:
    async with _child(tmp_path) as (reader, writer, _):
        await writer.send(_request(1, mode="split"))  # the child writes 7 bytes of its answer
        await writer.send(_request(2, mode="pair"))  # ... then the rest, and holds answer 2
        assert (await _answer(reader))["id"] == 1
        await writer.send(_request(3))  # answers 2 and 3 in one write
        assert [(await _answer(reader))["id"], (await _answer(reader))["id"]] == [2, 3]


async def test_a_line_over_the_limit_is_an_error_item_and_the_next_line_still_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "_MAX_LINE", 80)
    async with _child(tmp_path) as (reader, writer, _):
        await writer.send(_request(1, mode="nonl"))  # about 50 bytes, its newline held back
        await writer.send(_request(2))
        assert [(await _answer(reader))["id"], (await _answer(reader))["id"]] == [1, 2]
        await writer.send(_request(10**80, mode="nonl"))  # 81 digits: over the limit, unfinished
        with anyio.fail_after(BOUND):
            item = await reader.receive()
        assert isinstance(item, ValueError)
        await writer.send(_request(3))
        assert (await _answer(reader))["id"] == 3


def _unread(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


async def test_a_message_larger_than_a_full_pipe_is_written_whole_even_when_its_sender_is_cancelled(
    tmp_path: Path,
) -> None:
    """The first write fills the pipe; the rest waits until the child reads, shielded: a line
    started is finished, or every later message would be corrupt."""
    async with _child(tmp_path, WAIT_FOR_SIGNAL="1") as (reader, writer, errlog):
        await wait_for(lambda: "ready" in errlog.read_text(), timeout=BOUND)
        capacity = fcntl.fcntl(writer._fd, fcntl.F_GETPIPE_SZ)
        big = _request(1, pad="y" * (3 * capacity))
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.send, big)
                # The pipe is observably full while the sender waits for room.
                await wait_for(lambda: _unread(writer._fd) >= capacity, timeout=BOUND)
                scope.cancel()  # the sender is cancelled mid-line...
                child = writer._process
                os.kill(child.pid, signal.SIGUSR1)  # ... and only then may the child read
        assert scope.cancel_called
        # The whole line reached the child: it answers it, and the next message.
        answer = await _answer(reader)
        assert answer["id"] == 1
        assert answer["length"] == len(big.message.model_dump_json(by_alias=True, exclude_unset=True)) + 1
        await writer.send(_request(2))
        assert (await _answer(reader))["id"] == 2


async def test_the_stream_ends_when_the_child_exits(tmp_path: Path) -> None:
    async with _child(tmp_path) as (reader, writer, _):
        await writer.send(_request(1))
        assert (await _answer(reader))["id"] == 1
        await writer.aclose()  # stdin closed: the child's loop ends and it exits
        with anyio.fail_after(BOUND), pytest.raises(anyio.EndOfStream):
            await reader.receive()
