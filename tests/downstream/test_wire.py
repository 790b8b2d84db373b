"""What the HTTP transport can prove about a request that got no answer (never twice, issue 8).

Only proof that nothing reached the server releases a key: a refused connection, or a request
that never got past connection set-up (httpcore traces an event before writing any byte),
including one the transport never received at all once it is known to receive every wire (an
SDK task torn down before it ran: CI's flake). Such a verdict seals the wire: if the request
moves on later, the transport refuses it. A request past the connect is unknown. Real sockets on
loopback, the project's own transport.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import anyio
import httpx2
import pytest

from gateway.downstream.transport import _BEFORE_ANY_BYTE, WIRE, Abandoned, Wire, _RecordingTransport
from tests.support import wait_for

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _send(
    url: str, wire: Wire | None = None, *, seal_on: str | None = None
) -> tuple[Wire, list[str], BaseException | None]:
    """POST through the recording transport; ``seal_on``: judge the request not sent (as a torn
    down session's caller would) when httpcore traces that event."""
    wire = wire or Wire()
    events: list[str] = []
    failed: BaseException | None = None

    async def trace(name: str, info: dict[str, object]) -> None:
        events.append(name)  # a caller's own trace extension still hears every event
        if name == seal_on:
            assert wire.undelivered()

    token = WIRE.set(wire)
    try:
        async with httpx2.AsyncClient(transport=_RecordingTransport(httpx2.AsyncHTTPTransport())) as client:
            await client.post(url, content=b"{}", extensions={"trace": trace})
    except (httpx2.HTTPError, Abandoned) as exc:
        failed = exc
    finally:
        WIRE.reset(token)
    return wire, events, failed


async def test_an_answered_request_was_sent_and_its_connect_came_first() -> None:
    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(RESPONSE)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        with anyio.fail_after(20):
            wire, events, failed = await _send(f"http://127.0.0.1:{port}/mcp")
        tg.cancel_scope.cancel()
    assert failed is None
    assert wire.written and wire.entered and wire.sending and wire.http_status == 200
    assert not wire.undelivered() and not wire.sealed
    # The names the proof relies on: connection set-up is traced first, then the request itself.
    first_sending = next(i for i, name in enumerate(events) if not name.startswith(_BEFORE_ANY_BYTE))
    assert events[0].startswith("connection.connect_tcp.") and first_sending > 0
    assert "http11.send_request_headers.started" in events


async def test_a_refused_connection_is_not_delivered() -> None:
    with anyio.fail_after(20):
        wire, _, failed = await _send(f"http://127.0.0.1:{free_port()}/mcp")
    assert isinstance(failed, httpx2.ConnectError)
    assert wire.refused and not wire.sending and wire.undelivered()


class _Listener:
    """A loopback listener that records every connection it accepts and every byte it receives."""

    def __init__(self) -> None:
        self.accepted = 0
        self.ended = 0  # connections whose client closed them: all they carried was received
        self.received = b""

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with stream:
            try:
                while chunk := await stream.receive():
                    self.received += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        self.ended += 1


async def _listening(body: Callable[[str, _Listener], Awaitable[None]]) -> _Listener:
    seen = _Listener()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, seen.serve)
        with anyio.fail_after(20):
            await body(f"http://127.0.0.1:{port}/mcp", seen)
        tg.cancel_scope.cancel()
    return seen


async def test_a_request_judged_not_sent_before_it_reached_the_transport_is_refused_there() -> None:
    """The SDK's POST task, torn down late: its caller already has "not sent", so it must not go."""
    wire = Wire(tracked=True)
    assert wire.undelivered() and wire.sealed  # the caller's verdict comes first
    outcome: list[BaseException | None] = []

    async def late(url: str, seen: _Listener) -> None:
        _, events, failed = await _send(url, wire)
        outcome.append(failed)
        assert events == []

    seen = await _listening(late)
    assert isinstance(outcome[0], Abandoned)
    assert seen.accepted == 0 and seen.received == b""
    assert not wire.entered and not wire.sending


async def test_a_request_judged_not_sent_while_connecting_writes_no_byte() -> None:
    """Judged while its connection was opening (the session torn down): the connection completes,
    and the request stops before its first byte."""
    outcome: list[tuple[Wire, list[str], BaseException | None]] = []

    async def sealed_mid_connect(url: str, seen: _Listener) -> None:
        outcome.append(await _send(url, Wire(tracked=True), seal_on="connection.connect_tcp.complete"))
        await wait_for(lambda: seen.ended == 1)

    seen = await _listening(sealed_mid_connect)
    wire, events, failed = outcome[0]
    assert isinstance(failed, Abandoned)
    assert wire.entered and wire.sealed and not wire.sending
    assert "connection.connect_tcp.complete" in events
    assert not any(name.startswith("http11.") for name in events)
    assert seen.received == b""


@pytest.mark.parametrize(
    ("wire", "undelivered"),
    [
        (Wire(tracked=True), True),  # never reached the transport, which is known to get every wire
        (Wire(entered=True), True),  # in the transport, not past connection set-up: nothing written
        (Wire(entered=True, sending=True), False),  # past the connect: it may have reached the server
        (Wire(tracked=True, entered=True, sending=True), False),
        (Wire(), False),  # no trace of it, and wires not yet seen to arrive: proves nothing
        (Wire(written=True), False),  # an HTTP response came
        (Wire(entered=True, sending=True, refused=True), True),
    ],
)
def test_only_a_request_seen_to_end_before_its_first_byte_is_undelivered(
    wire: Wire, undelivered: bool
) -> None:
    assert wire.undelivered() is undelivered
    assert wire.sealed is (undelivered and not wire.refused)
