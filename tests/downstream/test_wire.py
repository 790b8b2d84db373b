"""What the HTTP transport can prove about a request that got no answer (never twice, issue 8).

Only proof that nothing reached the server releases a key: a refused connection, or a request
httpcore was seen opening a connection for that ended before any byte of it was written (its
session torn down mid-connect). A request with no trace at all, or one past the connect, is
unknown. Real sockets on loopback, the project's own transport.
"""

from __future__ import annotations

import socket

import anyio
import httpx2
import pytest

from gateway.downstream.transport import _BEFORE_ANY_BYTE, WIRE, Wire, _RecordingTransport

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _send(url: str) -> tuple[Wire, list[str], BaseException | None]:
    wire, events, failed = Wire(), [], None

    async def trace(name: str, info: dict[str, object]) -> None:
        events.append(name)  # a caller's own trace extension still hears every event

    token = WIRE.set(wire)
    try:
        async with httpx2.AsyncClient(transport=_RecordingTransport(httpx2.AsyncHTTPTransport())) as client:
            await client.post(url, content=b"{}", extensions={"trace": trace})
    except httpx2.HTTPError as exc:
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
    assert wire.written and wire.traced and wire.sending and wire.http_status == 200
    assert not wire.not_delivered
    # The names the proof relies on: connection set-up is traced first, then the request itself.
    first_sending = next(i for i, name in enumerate(events) if not name.startswith(_BEFORE_ANY_BYTE))
    assert events[0].startswith("connection.connect_tcp.") and first_sending > 0
    assert "http11.send_request_headers.started" in events


async def test_a_refused_connection_is_not_delivered() -> None:
    with anyio.fail_after(20):
        wire, _, failed = await _send(f"http://127.0.0.1:{free_port()}/mcp")
    assert isinstance(failed, httpx2.ConnectError)
    assert wire.refused and not wire.sending and wire.not_delivered


@pytest.mark.parametrize(
    ("wire", "not_delivered"),
    [
        (Wire(traced=True, sending=False), True),  # torn down while connecting: nothing written
        (Wire(traced=True, sending=True), False),  # past the connect: it may have reached the server
        (Wire(), False),  # no trace at all (a pooled connection, or no tracing): proves nothing
        (Wire(traced=True, sending=True, refused=True), True),
    ],
)
def test_only_a_request_seen_to_end_before_its_first_byte_is_not_delivered(
    wire: Wire, not_delivered: bool
) -> None:
    assert wire.not_delivered is not_delivered
