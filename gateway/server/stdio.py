"""MCP over our own stdin/stdout, without a thread hop per message.

The SDK's ``stdio_server`` reads and writes through worker threads: three hops (read, write,
flush) per call, about a quarter of a millisecond, which is most of what a proxy adds. Here
the protocol rides asyncio pipe transports on private duplicates of fd 0 and 1, and fd 0/1
themselves are pointed at /dev/null and stderr while we serve, so a stray ``print`` (ours or a
library's) can never corrupt the protocol stream. Where the descriptors are not pipes, sockets
or terminals (a regular file, say), it falls back to the SDK's transport.

A line that is not a message gets an answer, as over HTTP, and the gateway reads on: a line
longer than ``MAX_MESSAGE_BYTES`` (dropped whole, never buffered past the limit) or one that is
not JSON (nested too deep included) gets a JSON-RPC parse error with id null; JSON that is not
a JSON-RPC request gets an invalid-request error (with its id when it has a usable one). A
malformed notification or response gets no answer, as JSON-RPC says, only a log line.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
import pydantic_core
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

from gateway.server.limits import RateLimitedLog

logger = logging.getLogger(__name__)
_bad_input_log = RateLimitedLog(logger)

MAX_MESSAGE_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE  # the same bound as an HTTP request body
_READ_CHUNK = 64 * 1024


def _error_line(code: int, message: str, request_id: Any = None) -> bytes:
    reply = types.JSONRPCError(
        jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message)
    )
    return reply.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8") + b"\n"


def parse_line(line: bytes) -> tuple[SessionMessage | None, bytes | None]:
    """One input line → ``(message, None)``, or ``(None, error reply)``, or ``(None, None)``
    for a malformed notification or response (JSON-RPC answers neither)."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False)), None
    except ValueError:
        pass  # pydantic's ValidationError is a ValueError: classify it below, off the hot path
    try:
        raw = pydantic_core.from_json(line)
    except ValueError:  # not JSON, or nested deeper than the parser's recursion limit
        _bad_input_log.log(logging.WARNING, "parse", "stdio: a line that is not JSON: answered parse error")
        return None, _error_line(types.PARSE_ERROR, "Parse error")
    if isinstance(raw, dict) and "id" not in raw and "method" in raw:
        _bad_input_log.log(logging.WARNING, "notification", "stdio: a malformed notification was dropped")
        return None, None
    if isinstance(raw, dict) and "id" in raw and ("result" in raw or "error" in raw) and "method" not in raw:
        _bad_input_log.log(logging.WARNING, "response", "stdio: a malformed response was dropped")
        return None, None
    request_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        request_id = None
    _bad_input_log.log(logging.WARNING, "invalid", "stdio: not a JSON-RPC request: answered invalid request")
    return None, _error_line(
        types.INVALID_REQUEST, "Invalid request: not a single JSON-RPC request or notification", request_id
    )


async def read_lines(reader: asyncio.StreamReader, limit: int) -> AsyncIterator[bytes | None]:
    """Lines without their newline; ``None`` for a line longer than ``limit`` (read and
    dropped in chunks, so it never occupies more than ``limit`` bytes)."""
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            if buffer and not skipping:
                yield bytes(buffer)
            return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not skipping:
                    buffer += chunk[start:]
                    if len(buffer) > limit:
                        buffer.clear()
                        skipping = True
                break
            if skipping:
                skipping = False
                yield None
            else:
                buffer += chunk[start:end]
                if len(buffer) > limit:
                    yield None
                else:
                    yield bytes(buffer)
                buffer.clear()
            start = end + 1


def _pipe_like(fd: int) -> bool:
    import stat

    # epoll takes pipes, sockets and terminals; not /dev/null or regular files.
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def _connect(reader: asyncio.StreamReader) -> tuple[asyncio.ReadTransport, asyncio.StreamWriter]:
    """Pipe transports on private duplicates of fd 0 and 1."""
    loop = asyncio.get_running_loop()
    wire_in = os.fdopen(fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3), "rb", buffering=0)
    wire_out = os.fdopen(fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3), "wb", buffering=0)
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), wire_in)
    write_transport, write_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, wire_out
    )
    return read_transport, asyncio.StreamWriter(write_transport, write_protocol, None, loop)


@asynccontextmanager
async def stdio_transport() -> AsyncIterator[tuple[Any, Any]]:
    """``(read_stream, write_stream)`` for ``Server.run`` over this process's stdin/stdout."""
    if not (_pipe_like(0) and _pipe_like(1)):
        # Not pollable (/dev/null, a file): the SDK's threaded transport reads anything.
        async with stdio_server() as streams:
            yield streams
        return

    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES + 1)
    read_transport, writer = await _connect(reader)
    write_transport = writer.transport

    saved_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    saved_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        read_stream_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
        write_stream, write_stream_reader = create_context_streams[SessionMessage](0)

        async def reply(data: bytes) -> None:
            try:
                writer.write(data)
                await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                await anyio.lowlevel.checkpoint()

        async def read_messages() -> None:
            async with read_stream_writer:
                async for line in read_lines(reader, MAX_MESSAGE_BYTES):
                    if line is None:
                        _bad_input_log.log(
                            logging.WARNING,
                            "long",
                            "stdio: a line longer than %d bytes was dropped: answered parse error",
                            MAX_MESSAGE_BYTES,
                        )
                        await reply(_error_line(types.PARSE_ERROR, "Parse error: message too long"))
                        continue
                    if not line.strip():
                        continue
                    message, error = parse_line(line)
                    if message is not None:
                        await read_stream_writer.send(message)
                    elif error is not None:
                        await reply(error)

        async def write_messages() -> None:
            try:
                async with write_stream_reader:
                    async for session_message in write_stream_reader:
                        data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                        writer.write(data.encode("utf-8") + b"\n")
                        await writer.drain()
            except (anyio.ClosedResourceError, BrokenPipeError, ConnectionResetError):
                await anyio.lowlevel.checkpoint()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_messages)
                tg.start_soon(write_messages)
                yield read_stream, write_stream
                tg.cancel_scope.cancel()  # the session is over; stdin may still be open
        finally:
            read_transport.close()
            with suppress(Exception):
                write_transport.close()
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
