"""MCP over our own stdin/stdout: each line parsed and handed to the dispatcher, each answer written,
by the task that has it, with no stream or task in between.

The SDK's ``stdio_server`` reads and writes through worker threads and memory streams: a thread
hop per read, write and flush, and per message two memory-stream hops (the reader's task to
``Server.run``'s era relay, that relay to the dispatcher) plus one for every answer (to a writer
task), each costing anyio checkpoints and event-loop passes. On a proxy whose own work per call
is a fraction of a millisecond, that plumbing was most of the loop's time. Here:

- ``LineReader`` is the dispatcher's read stream: its ``receive`` reads one line from an asyncio
  pipe and parses it, in the dispatcher's own task;
- ``LineWriter`` is its write stream: ``send`` serialises and writes the message from the task
  that answers (an asyncio ``write`` hands the whole line over at once, so lines never interleave);
- ``serve`` decides the connection's protocol era from the first request itself (it can look
  ahead on its own reader) and runs the SDK's loop for that era directly, so no relay task sits
  between the pipe and the dispatcher (``gateway/_sdk.py``: ``serve_era``).

Both run on private duplicates of fd 0 and 1; fd 0/1 themselves point at /dev/null and stderr
while we serve, so a stray ``print`` (ours or a library's) can never corrupt the protocol stream.
Where the descriptors are not pipes, sockets or terminals (a regular file, say), it falls back to
the SDK's transport and ``Server.run``.

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
import stat
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import pydantic_core
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared.message import SessionMessage

from gateway import _sdk
from gateway.server.limits import RateLimitedLog

logger = logging.getLogger(__name__)
_bad_input_log = RateLimitedLog(logger)

MAX_MESSAGE_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE  # the same bound as an HTTP request body
PRE_REQUEST_LIMIT = 8  # frames kept from before the first request (the SDK keeps as many)
_READ_CHUNK = 64 * 1024
STDIN_ENDED_GRACE = 60.0  # the longest the answers to requests read before stdin ended are awaited
STDIN_ENDED_LOG = "stdin ended"
STANDING_METHODS = frozenset({"subscriptions/listen"})  # answered only when the client lets go


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
    # epoll takes pipes, sockets and terminals; not /dev/null or regular files.
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


class LineReader(anyio.abc.ObjectReceiveStream[SessionMessage | Exception]):
    """A read stream of JSON-RPC messages, one per line of an asyncio ``StreamReader``.

    A line that is not a message is answered on ``writer`` (see the module's docstring) and
    skipped, in the reading task. ``unread`` puts items back in front: the era is decided by
    looking ahead at the first request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._lines = read_lines(reader, MAX_MESSAGE_BYTES)
        self._writer = writer
        self._ahead: deque[SessionMessage | Exception] = deque()
        self._closed = False

    async def receive(self) -> SessionMessage | Exception:
        if self._ahead:
            return self._ahead.popleft()
        if self._closed:
            raise anyio.ClosedResourceError
        while True:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                raise anyio.EndOfStream from None
            if line is None:
                _bad_input_log.log(
                    logging.WARNING,
                    "long",
                    "stdio: a line longer than %d bytes was dropped: answered parse error",
                    MAX_MESSAGE_BYTES,
                )
                await self._reply(_error_line(types.PARSE_ERROR, "Parse error: message too long"))
                continue
            if not line.strip():
                continue
            message, error = parse_line(line)
            if message is not None:
                return message
            if error is not None:
                await self._reply(error)

    async def _reply(self, data: bytes) -> None:
        with suppress(BrokenPipeError, ConnectionResetError):
            self._writer.write(data)
            await self._writer.drain()

    def unread(self, items: list[SessionMessage | Exception]) -> None:
        self._ahead.extendleft(reversed(items))

    async def opening_request(self) -> types.JSONRPCRequest | None:
        """Read up to the first request and put everything read back; ``None`` at end of input."""
        lead: list[SessionMessage | Exception] = []
        try:
            while True:
                item = await self.receive()
                if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
                    lead.append(item)
                    return item.message
                if len(lead) < PRE_REQUEST_LIMIT:
                    lead.append(item)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        finally:
            self.unread(lead)

    async def aclose(self) -> None:
        self._closed = True
        self._ahead.clear()


class LineWriter(anyio.abc.ObjectSendStream[SessionMessage]):
    """A write stream of JSON-RPC messages, one line each, written by the sending task."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False

    async def send(self, item: SessionMessage) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._writer.is_closing():
            raise anyio.BrokenResourceError
        data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
        try:
            self._writer.write(data)
            await self._writer.drain()  # waits only while the reader lags (pipe buffer full)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        self._closed = True


async def _connect(reader: asyncio.StreamReader) -> tuple[asyncio.ReadTransport, asyncio.StreamWriter]:
    """Pipe transports on private duplicates of fd 0 and 1."""
    loop = asyncio.get_running_loop()
    wire_in = os.fdopen(fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3), "rb", buffering=0)
    wire_out = os.fdopen(fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3), "wb", buffering=0)
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), wire_in)
    write_transport, write_protocol = await loop.connect_write_pipe(_sdk.write_pipe_protocol, wire_out)
    return read_transport, asyncio.StreamWriter(write_transport, write_protocol, None, loop)


@asynccontextmanager
async def _own_stdio() -> AsyncIterator[tuple[LineReader, LineWriter]]:
    """Our stdin/stdout as a ``LineReader``/``LineWriter`` pair, with fd 0/1 set aside meanwhile."""
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES + 1)
    read_transport, writer = await _connect(reader)
    saved_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    saved_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    try:
        yield LineReader(reader, writer), LineWriter(writer)
    finally:
        read_transport.close()
        with suppress(Exception):
            writer.transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


class Unanswered:
    """The requests each side of stdio has not answered yet, so that the end of stdin loses none.

    A script pipes its requests in and closes stdin at once (``printf ... | idem-gateway serve``,
    ``< requests.jsonl``); the SDK cancels every request in flight at the end of its input, so a
    keyed call that ran downstream was recorded and never answered. At that end the gateway now
    answers what it was asked first (each call is bounded by its own timeout; all of them by
    ``grace``), and a question of its own to the client (an approval, a relayed sampling
    request) fails at once with ``CONNECTION_CLOSED``: nobody is left to answer it.
    """

    def __init__(self, grace: float = STDIN_ENDED_GRACE) -> None:
        self.grace = grace
        self.ended = False
        self._theirs: set[types.RequestId] = set()  # the client's requests we have not answered
        self._ours: set[types.RequestId] = set()  # our requests the client has not answered
        self._answered = anyio.Event()

    def read(self, item: SessionMessage | Exception) -> None:
        message = item.message if isinstance(item, SessionMessage) else None
        if isinstance(message, types.JSONRPCRequest):
            if message.method not in STANDING_METHODS:
                self._theirs.add(message.id)
        elif isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            if message.id is not None:
                self._ours.discard(message.id)
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            self._done((message.params or {}).get("requestId"))  # a cancelled request is not answered

    def sending(self, message: types.JSONRPCMessage) -> None:
        if isinstance(message, types.JSONRPCRequest):
            if self.ended:
                raise anyio.BrokenResourceError  # the dispatcher reports CONNECTION_CLOSED
            self._ours.add(message.id)

    def sent(self, message: types.JSONRPCMessage, *, delivered: bool) -> None:
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            self._done(message.id)
        elif isinstance(message, types.JSONRPCRequest) and not delivered:
            self._ours.discard(message.id)

    def _done(self, request_id: Any) -> None:
        self._theirs.discard(request_id)
        if not self._theirs:
            self._answered.set()

    def end(self) -> list[SessionMessage]:
        """Stdin ended: an error in place of each answer the client can no longer give."""
        self.ended = True
        closed = types.ErrorData(
            code=types.CONNECTION_CLOSED, message="stdin ended: the client cannot answer"
        )
        errors = [SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=i, error=closed)) for i in self._ours]
        self._ours.clear()
        return errors

    async def settled(self) -> None:
        """Return once every request read before the end is answered, or ``grace`` passed."""
        if not self._theirs:
            logger.info("%s: no request unanswered", STDIN_ENDED_LOG)
            return
        logger.info("%s: answering %d request(s) read before it", STDIN_ENDED_LOG, len(self._theirs))
        self._answered = anyio.Event()  # nothing is read any more: the set only shrinks now
        with anyio.move_on_after(self.grace):
            await self._answered.wait()
        if self._theirs:
            logger.warning(
                "%s: %d request(s) still unanswered after %.0f s: cancelled",
                STDIN_ENDED_LOG,
                len(self._theirs),
                self.grace,
            )

    def reader(self, stream: anyio.abc.ObjectReceiveStream[SessionMessage | Exception]) -> _AnsweringReader:
        return _AnsweringReader(stream, self)

    def writer(self, stream: anyio.abc.ObjectSendStream[SessionMessage]) -> _AnsweringWriter:
        return _AnsweringWriter(stream, self)


class _AnsweringReader(anyio.abc.ObjectReceiveStream[SessionMessage | Exception]):
    """The read stream seen by the dispatcher: at the end of input, the errors for our pending
    questions first, then the end itself once our own answers are written."""

    def __init__(
        self, inner: anyio.abc.ObjectReceiveStream[SessionMessage | Exception], seen: Unanswered
    ) -> None:
        self._inner = inner
        self._seen = seen
        self._closing: deque[SessionMessage] = deque()

    async def receive(self) -> SessionMessage | Exception:
        if not self._seen.ended:
            try:
                item = await self._inner.receive()
            except anyio.EndOfStream:
                self._closing.extend(self._seen.end())
            else:
                self._seen.read(item)
                return item
        if self._closing:
            return self._closing.popleft()
        await self._seen.settled()
        raise anyio.EndOfStream

    async def aclose(self) -> None:
        await self._inner.aclose()


class _AnsweringWriter(anyio.abc.ObjectSendStream[SessionMessage]):
    """The write stream seen by the dispatcher: notes each answer, and refuses a question once
    stdin has ended."""

    def __init__(self, inner: anyio.abc.ObjectSendStream[SessionMessage], seen: Unanswered) -> None:
        self._inner = inner
        self._seen = seen

    async def send(self, item: SessionMessage) -> None:
        self._seen.sending(item.message)
        delivered = False
        try:
            await self._inner.send(item)
            delivered = True
        finally:
            self._seen.sent(item.message, delivered=delivered)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def serve(server: Server[Any]) -> None:
    """Serve ``server`` over this process's stdin/stdout until stdin ends and what was asked
    before it is answered (see ``Unanswered``), or we are cancelled."""
    options = server.create_initialization_options()
    seen = Unanswered()
    if not (_pipe_like(0) and _pipe_like(1)):
        # Not pollable (/dev/null, a file): the SDK's threaded transport reads anything.
        async with stdio_server() as (read_stream, write_stream):
            await server.run(seen.reader(read_stream), seen.writer(write_stream), options)
        return
    async with _own_stdio() as (read_stream, write_stream):
        opening = await read_stream.opening_request()
        async with server.lifespan(server) as state:
            await _sdk.serve_era(
                server, opening, seen.reader(read_stream), seen.writer(write_stream), state, options
            )
