"""Client transports that can tell "not sent" from "sent": the line between release and unknown.

A keyed call whose request never reached the downstream may be released (a retry is safe); one
that did reach it, and got no answer, is unknown. The SDK's transports cannot say which: its
stdio transport writes from a background task and turns a broken pipe into "connection
closed"; its HTTP transport maps every status >= 400 to -32603. So:

- ``stdio_transport`` writes each message to the child's stdin from the caller's own task, so
  the write's outcome is the caller's to know (a dead child's pipe fails the write: nothing was
  delivered), and it saves the SDK's writer task and stream hop on every message; the child's
  stdout is read by the task receiving from it (the SDK's dispatcher), with no reader task or
  stream in between.
- ``http_transport`` gives the SDK an httpx client whose transport records, for the request
  being sent, whether the connection was refused (nothing sent) and the HTTP status.

What is recorded goes to the ``Wire`` of the current context (``WIRE``): ``session._send`` sets
one per request, and the SDK runs an HTTP request's POST in the sender's context (its context
streams carry it), so concurrent requests never see each other's wire. A downstream session's
``Reach`` records that this carrying was seen to work, which is what lets a request the
transport never received count as not sent; a wire judged not sent is sealed, so the transport
refuses it if it arrives late (a POST task the SDK spawned before its session was torn down).
"""

from __future__ import annotations

import contextvars
import fcntl
import logging
import os
import select
import signal
import struct
import termios
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.abc
import anyio.lowlevel
import httpx2
import mcp_types as types
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

logger = logging.getLogger(__name__)

_EXIT_GRACE = 2.0  # seconds a child gets to exit after its stdin closes, and again after SIGTERM
_MAX_LINE = 64 * 1024 * 1024
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)  # the SDK's defaults: a response stream may idle
# Idle connections are dropped well before common servers drop them (uvicorn: 5 s): a request
# written on a connection the server is closing would fail after sending, an unknown outcome.
# Enough of them are kept for a busy gateway's concurrency.
_HTTP_LIMITS = httpx2.Limits(max_connections=None, max_keepalive_connections=128, keepalive_expiry=2.0)


@dataclass(slots=True)
class Reach:
    """Whether a session's transports have received a request together with its sender's wire.

    Until it has, a request the transport never saw proves nothing (the wire may simply not have
    travelled with it); once it has, the same SDK path carries every wire.
    """

    carried: bool = False


class Abandoned(Exception):
    """A request already judged not sent reached the transport late: it is not sent now either."""


@dataclass(slots=True)
class Wire:
    """What the transport learned about one request on its way out."""

    written: bool = False  # the whole message reached the peer's pipe / the HTTP request went out
    refused: bool = False  # it could not be delivered at all (dead pipe, connection refused)
    http_status: int | None = None
    # stdio: whether the message, written whole, was provably never read (its reader died first)
    never_read: Callable[[], bool] | None = None
    # HTTP: httpcore traced an event past connection set-up: bytes of it may have been written
    sending: bool = False
    # The transport received the request (``entered``: from then on httpcore's trace would see
    # it start sending); ``tracked``: the transport is known to receive each request with its
    # wire (``Reach.carried`` when the request was made). ``sealed``: judged not sent, so the
    # transport must refuse it from now on.
    entered: bool = False
    tracked: bool = False
    sealed: bool = False

    def undelivered(self) -> bool:
        """Whether the request provably never reached the server; if so it never will (sealed).

        Not sent: a refused connection or dead pipe; a message the dead reader never read; a
        request that never got as far as starting to send. That last needs the wire to be
        watched wherever the request is (``tracked``, or seen in the transport): never
        received by the transport (an SDK task torn down before it ran), or received and not
        past connection set-up (httpcore traces an event before writing any byte). Sealing
        makes the verdict final: if the request moves on later, the transport refuses it.
        """
        if self.written:
            return self.never_read is not None and self.never_read()
        if self.refused:
            return True
        if (self.tracked or self.entered) and not self.sending:
            self.sealed = True
            return True
        return False

    def enter(self) -> None:
        """The transport has the request: refuse it if it was already judged not sent."""
        if self.sealed:
            raise Abandoned("the request was abandoned before it was sent")
        self.entered = True


WIRE: contextvars.ContextVar[Wire | None] = contextvars.ContextVar("idem_gateway_wire", default=None)


# ---- stdio ----------------------------------------------------------------------------------


class _PipeWriter(anyio.abc.ObjectSendStream[SessionMessage]):
    """The write half handed to the SDK: each ``send`` writes straight into the child's stdin.

    The pipe is ours (a raw non-blocking fd), so it can say what became of a message: the
    number of bytes written is counted, and once the child has exited with no reader left on
    the pipe, the bytes still in it (``FIONREAD``) were never read by anyone. A message whose
    last byte (its newline) is among them never reached the server as a line: nothing ran.
    """

    def __init__(self, process: anyio.abc.Process, fd: int) -> None:
        self._process = process
        self._fd = fd
        # One message at a time: lines must never interleave. Taken without a yield when free
        # (still a cancellation point): a proxied call should not pay an event-loop pass for it.
        self._lock = anyio.Lock(fast_acquire=True)
        self._closed = False
        self._total = 0  # bytes written to the pipe so far
        self._consumed: int | None = None  # bytes the readers took, frozen once none is left

    async def send(self, item: SessionMessage) -> None:
        wire = WIRE.get()
        if wire is not None:
            try:
                wire.enter()
            except Abandoned as exc:
                raise anyio.BrokenResourceError from exc
        if self._closed or self._process.returncode is not None:
            if wire is not None:
                wire.refused = True
            raise anyio.BrokenResourceError
        data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
        async with self._lock:
            view, sent = memoryview(data), 0
            try:
                while sent < len(data):
                    # Written at once while the pipe has room; waited for only when it is full.
                    try:
                        sent += os.write(self._fd, view[sent:])
                        continue
                    except BlockingIOError:
                        pass
                    # A line started is finished: half a line would corrupt every later message.
                    with anyio.CancelScope(shield=sent > 0):
                        await anyio.wait_writable(self._fd)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                # A pipe whose reader is gone: no complete line reached the child, so nothing ran.
                self._total += sent
                if wire is not None:
                    wire.refused = True
                raise anyio.BrokenResourceError from exc
            self._total += sent
            end = self._total
        if wire is not None:
            wire.written = True
            wire.never_read = lambda: self._consumed is not None and self._consumed < end

    def child_exited(self) -> None:
        """The child is gone: if no reader is left on the pipe, what is still in it was never read."""
        if self._closed or self._consumed is not None:
            return
        with suppress(OSError):
            poller = select.poll()
            poller.register(self._fd, select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                unread = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0"))[0]
                self._consumed = self._total - unread

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)
            os.close(self._fd)


def _read_now(fd: int) -> bytes | None:
    """What the pipe holds now (``b""`` at its end), or ``None`` when it is empty."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


class _PipeReader(anyio.abc.ObjectReceiveStream[SessionMessage | Exception]):
    """The read half handed to the SDK: ``receive`` reads the child's stdout in the receiving task.

    The SDK's dispatcher loops on ``receive``, so a response goes from the pipe to the request
    waiting for it with no reader task or memory stream in between (each a hop: a checkpoint and
    an event-loop pass per message). The stream ends when the child exits, not only at the end
    of stdout (a process it left behind may hold stdout open); what it wrote before is still read.
    """

    def __init__(self, fd: int, exited: anyio.Event) -> None:
        self._fd = fd
        self._exited = exited
        self._buffer = bytearray()
        self._ready: deque[SessionMessage | Exception] = deque()
        self._ended = False
        self._closed = False
        self._waiting: anyio.CancelScope | None = None

    def child_exited(self) -> None:
        """Stop waiting for output: the child is gone, so only what the pipe holds is left."""
        if self._waiting is not None:
            self._waiting.cancel()

    def detach(self) -> None:
        """The descriptor is about to be closed: never touch it again (its number may be reused)."""
        self._ended = True
        self.child_exited()

    async def receive(self) -> SessionMessage | Exception:
        await anyio.lowlevel.checkpoint_if_cancelled()
        while not self._ready:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._ended:
                raise anyio.EndOfStream
            try:
                await self._fill()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                self._ended = True  # the descriptor is being closed: we are closing
        return self._ready.popleft()

    async def _fill(self) -> None:
        """Read what the pipe holds (waiting for it when empty) and parse its complete lines."""
        chunk = _read_now(self._fd)
        if chunk is None:
            if self._exited.is_set():
                self._ended = True  # the child is gone and all it wrote is read
                return
            with anyio.CancelScope() as scope:
                self._waiting = scope
                await anyio.wait_readable(self._fd)
            self._waiting = None
            return
        if not chunk:
            # The end of stdout. Give the child a moment to be seen exiting, so the verdict on
            # what it never read is there when the callers look.
            with anyio.move_on_after(_EXIT_GRACE):
                await self._exited.wait()
            self._ended = True
            return
        buffer = self._buffer
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if line.strip():
                self._ready.append(_parse(line))
        del buffer[:start]
        if len(buffer) > _MAX_LINE:
            self._ready.append(ValueError("a message from the server exceeds the size limit"))
            buffer.clear()

    async def aclose(self) -> None:
        self._closed = True


@asynccontextmanager
async def stdio_transport(
    command: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    errlog: TextIO,
) -> AsyncIterator[tuple[Any, Any]]:
    """Start the server process and talk MCP over its stdin/stdout until exit.

    The child gets a safe subset of our environment plus ``env`` (as the SDK does), runs in a
    session of its own (a signal to the gateway's process group does not reach it), and is
    stopped on exit: stdin closed, then SIGTERM to its group, then SIGKILL, each after a grace.

    The connection ends when the child exits, not only at the end of its stdout: a process it
    left behind may hold stdout open, and a request written just before the child died would
    otherwise wait for its whole timeout. What the child wrote before it exited is still read.
    """
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    try:
        process = await anyio.open_process(
            [command, *args],
            stdin=stdin_read,
            stdout=stdout_write,
            env={**get_default_environment(), **env},
            cwd=cwd,
            stderr=errlog,
            start_new_session=True,
        )
    except BaseException:
        for fd in (stdin_read, stdin_write, stdout_read, stdout_write):
            os.close(fd)
        raise
    os.close(stdin_read)
    os.close(stdout_write)
    os.set_blocking(stdin_write, False)
    os.set_blocking(stdout_read, False)
    writer = _PipeWriter(process, stdin_write)
    exited = anyio.Event()
    reader = _PipeReader(stdout_read, exited)

    async def watch_exit() -> None:
        await process.wait()
        writer.child_exited()  # before the read stream ends: the callers' verdicts are frozen
        exited.set()
        reader.child_exited()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_exit)
            try:
                yield reader, writer
            finally:
                with anyio.CancelScope(shield=True):
                    await writer.aclose()
                    await _stop(process)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), suppress(Exception):
            await process.aclose()
        reader.detach()
        with suppress(OSError):
            anyio.notify_closing(stdout_read)
            os.close(stdout_read)
        await writer.aclose()


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        logger.warning("the downstream wrote a line that is not a JSON-RPC message")
        return exc


async def _stop(process: anyio.abc.Process) -> None:
    """Escalate to SIGTERM and SIGKILL of the child's process group (its stdin is closed)."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and process.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
        with anyio.move_on_after(_EXIT_GRACE):
            await process.wait()
        if process.returncode is not None:
            return
    logger.warning("downstream process %d did not exit after SIGKILL", process.pid)


# ---- streamable HTTP -----------------------------------------------------------------------


class _RecordingTransport(httpx2.AsyncBaseTransport):
    """Notes, on the current ``Wire``, that the request arrived, a refused connection and the
    response's status; refuses a request whose wire was sealed."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, reach: Reach | None = None) -> None:
        self._inner = inner
        self._reach = reach or Reach()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        wire = WIRE.get()
        if wire is not None:
            wire.enter()  # before any await: a sealed request goes no further
            self._reach.carried = True
            request.extensions = {**request.extensions, "trace": _sending_tracer(wire, request)}
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            # No connection was made: the request never left this machine.
            if wire is not None:
                wire.refused = True
            raise
        if wire is not None:
            wire.written = True
            wire.http_status = response.status_code
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


# httpcore trace events that come before any byte of the request is written.
_BEFORE_ANY_BYTE = (
    "connection.connect_tcp.",
    "connection.connect_unix_socket.",
    "connection.start_tls.",
    "connection.retry.",
)


def _sending_tracer(wire: Wire, request: httpx2.Request) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """httpcore's ``trace`` extension, noting on ``wire`` how far the request got: while only
    connection set-up was traced (TCP connect, TLS), nothing of it was written; any other event
    (headers, HTTP/2 preface, one httpcore may add later) counts as sending, so an unfamiliar
    name errs towards "unknown"."""
    inner = request.extensions.get("trace")

    async def trace(name: str, info: dict[str, Any]) -> None:
        if not name.startswith(_BEFORE_ANY_BYTE):
            if wire.sealed:
                # Judged not sent while its connection was opening: it stays unsent.
                raise Abandoned("the request was abandoned before it was sent")
            wire.sending = True
        if inner is not None:
            await inner(name, info)

    return trace


@asynccontextmanager
async def http_transport(
    url: str, headers: Mapping[str, str], reach: Reach | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """Streamable HTTP with the manifest's headers on every request, over a recording transport.

    The httpx client is created here and closed with the transport (the SDK closes only
    clients it created itself). ``reach`` learns when the wires are seen to arrive.
    """
    client = httpx2.AsyncClient(
        headers=dict(headers) or None,
        timeout=_HTTP_TIMEOUT,
        transport=_RecordingTransport(httpx2.AsyncHTTPTransport(limits=_HTTP_LIMITS), reach),
    )
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams
