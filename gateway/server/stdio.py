"""MCP over our own stdin/stdout, without a thread hop per message.

The SDK's ``stdio_server`` reads and writes through worker threads: three hops (read, write,
flush) per call, about a quarter of a millisecond, which is most of what a proxy adds. Here
the protocol rides asyncio pipe transports on private duplicates of fd 0 and 1, and fd 0/1
themselves are pointed at /dev/null and stderr while we serve, so a stray ``print`` (ours or a
library's) can never corrupt the protocol stream. Where the descriptors are not pipes, sockets
or terminals (a regular file, say), it falls back to the SDK's transport.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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

    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
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

        async def read_messages() -> None:
            async with read_stream_writer:
                while True:
                    try:
                        line = await reader.readline()
                    except (ValueError, asyncio.LimitOverrunError) as exc:
                        await read_stream_writer.send(exc)
                        continue
                    if not line:
                        return
                    if not line.strip():
                        continue
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except Exception as exc:
                        await read_stream_writer.send(exc)
                        continue
                    await read_stream_writer.send(SessionMessage(message))

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
