"""Items 4 and 5 (HTTP): slow, many or hostile clients cannot take the server down.

Real ``serve --transport http`` processes on loopback. Slow connections that trickle their
headers are cut by the header timeout while a valid client keeps working; past the
connection cap new requests get 503 at once; under a low descriptor limit the accept loop
logs one line per interval, not hundreds of thousands; a principal at its session cap loses
its oldest idle session to a new one, or gets 429 when all are busy. Every loop is bounded
in count and in time.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import httpx2
import pytest
from anyio.abc import Process

from tests.http.kit import (
    INITIALIZE,
    MCP_HEADERS,
    WAIT,
    _wait_healthy,
    bearer,
    free_port,
    http_gateway,
    serve_argv,
    write_tokens,
)
from tests.http.kit import _stop as stop_process
from tests.security import low_fd_gateway
from tests.support import Setup

LEGACY = "2025-11-25"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    return made


async def _slow_client(
    port: int, cut: list[bytes | None], *, max_bytes: int = 400, interval: float = 0.1
) -> None:
    """Trickle a request head one byte at a time until the server closes the connection
    (bounded: ``max_bytes`` bytes, one every ``interval`` seconds). Records what it read when
    cut (the 408; or b"" when the close raced a write and reset the connection), None if never."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * max_bytes
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        for byte in head[:max_bytes]:
            try:
                await stream.send(bytes([byte]))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                cut.append(await _read_all(stream))
                return
            with anyio.move_on_after(interval):
                cut.append(await _read_all(stream))
                return
    cut.append(None)


async def _read_all(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return data


async def test_slow_headers_are_cut_by_the_header_timeout_while_a_valid_client_keeps_working(
    setup: Setup,
) -> None:
    slow = 50
    async with http_gateway(setup, "--header-timeout", "1") as gw:
        cut: list[bytes | None] = []
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(slow):
                    tg.start_soon(_slow_client, gw.port, cut)
                async with gw.client("alice") as client:
                    for _ in range(5):
                        listed = await client.call_tool("list_invoices", {})
                        assert not listed.is_error
    assert len(cut) == slow and None not in cut  # every slow connection was cut by the server
    answered = [a for a in cut if a]
    assert answered and all(a.startswith(b"HTTP/1.1 408") for a in answered), {a[:40] for a in answered}


async def test_the_next_request_on_a_kept_alive_connection_has_its_own_header_deadline(setup: Setup) -> None:
    """After a response the deadline is armed again: a second head trickled on the same
    connection is cut with 408 like a first one, and a prompt one on another is answered."""
    async with http_gateway(setup, "--header-timeout", "1") as gw:
        with anyio.fail_after(WAIT):
            async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
                await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                first = b""
                while b"\r\n\r\n" not in first:
                    first += await stream.receive()
                assert first.startswith(b"HTTP/1.1 200")
                assert b"connection: close" not in first.lower()  # kept alive
                cut: bytes | None = None
                for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400:
                    await stream.send(bytes([byte]))
                    with anyio.move_on_after(0.1):
                        cut = await _read_all(stream)
                        break
            assert cut is not None and cut.startswith(b"HTTP/1.1 408"), cut
            assert (await gw.get("/healthz")).status_code == 200


async def test_past_the_connection_cap_new_requests_get_503_until_connections_close(setup: Setup) -> None:
    cap = 10
    async with http_gateway(setup, "--max-connections", str(cap), "--header-timeout", "60") as gw:
        with anyio.fail_after(WAIT):
            idle = [await anyio.connect_tcp("127.0.0.1", gw.port) for _ in range(cap)]
            try:
                refused = await gw.get("/healthz")
            finally:
                for stream in idle:
                    await stream.aclose()
            assert refused.status_code == 503
            # The server notices the closes in its own time: poll, bounded by fail_after.
            while (await gw.get("/healthz")).status_code != 200:  # noqa: ASYNC110
                await anyio.sleep(0.05)


@asynccontextmanager
async def _low_fd_gateway(setup: Setup, limit: int) -> AsyncIterator[tuple[int, Path, Process]]:
    """The gateway under ``RLIMIT_NOFILE = limit``, its log limits observable (``low_fd_gateway.py``)."""
    port = free_port()
    log = setup.tmp / "low-fd.log"
    argv = serve_argv(setup, port, "--tokens", str(write_tokens(setup.tmp / "tokens.toml")))
    assert argv[1:3] == ["-m", "gateway"]
    with log.open("wb") as errlog:
        process = await anyio.open_process(
            [sys.executable, str(Path(low_fd_gateway.__file__)), str(limit), *argv[3:]],
            stderr=errlog,
            cwd=setup.tmp,
        )
        try:
            from tests.http.kit import HttpGateway

            await _wait_healthy(HttpGateway(process, port, log))
            yield port, log, process
        finally:
            await stop_process(process)


_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # the CLI's log format
_HELD = re.compile(r"\(and (\d+) more like it in the last (\S+)s\)")  # RateLimitedLog.suffix


@dataclass
class _Written:
    """An accept-failure record the limiter let through, and the failures tallied up to it."""

    tallied: int
    text: str


def _accept_failures(log: Path) -> tuple[int, list[_Written]]:
    """Accept failures tallied so far, and the records let through (with any continuation lines,
    should a message's own line breaks ever reach the log unescaped)."""
    tallied, written = 0, []
    current: _Written | None = None
    text = log.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # a line still being written waits
        if line == low_fd_gateway.TALLY:
            tallied, current = tallied + 1, None
        elif low_fd_gateway.ACCEPT_FAILED in line:
            current = _Written(tallied, line)
            written.append(current)
        elif _RECORD_START.match(line):
            current = None
        elif current is not None:
            current.text += "\n" + line
    return tallied, written


async def test_out_of_descriptors_the_accept_loop_logs_once_per_interval_and_recovers(setup: Setup) -> None:
    """Accept failures one after another (each costs one of asyncio's retries), one line per interval.

    The limiter's interval is an hour, and the test turns the gateway's log clock one interval
    forward (``low_fd_gateway.py``): what is let through depends on the failures tallied, not
    on how long they took.
    """
    failures = 3  # tallied within the first interval before the clock is turned
    async with _low_fd_gateway(setup, limit=128) as (port, log, process):
        with anyio.fail_after(WAIT):
            flood = []
            try:
                for _ in range(300):  # more than the gateway has descriptors for
                    flood.append(await anyio.connect_tcp("127.0.0.1", port))
                while _accept_failures(log)[0] < failures:  # noqa: ASYNC110 - the gateway's log
                    await anyio.sleep(0.05)
                within_one = _accept_failures(log)[1]
                process.send_signal(signal.SIGUSR1)  # the next interval
                while len(written := _accept_failures(log)[1]) < 2:  # noqa: ASYNC110 - as above
                    await anyio.sleep(0.05)
            finally:
                for stream in flood:
                    await stream.aclose()
            async with httpx2.AsyncClient(timeout=5.0) as http:
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                    await anyio.sleep(0.1)
    # Within the first interval: the first failure written as it was, the others held.
    assert len(within_one) == 1 and within_one[0].tallied == 1, within_one
    assert "more like it" not in within_one[0].text, within_one[0].text
    # In the next: its first failure written, with the exact count of those held before it.
    first, second = written[:2]
    assert first == within_one[0] and "more like it" not in first.text
    held = _HELD.search(second.text)
    assert held is not None, second
    # Every failure between the two lines is counted, once (the second line is failure N).
    assert (int(held[1]), float(held[2])) == (second.tallied - 2, low_fd_gateway.INTERVAL), second
    assert len(written) == 2  # nothing more let through within the second interval
    lines = log.read_text().splitlines()
    assert len(lines) - lines.count(low_fd_gateway.TALLY) < 200, lines[-20:]


async def _open_session(http: httpx2.AsyncClient, url: str) -> tuple[int, str | None]:
    response = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **bearer("alice")})
    session = response.headers.get("mcp-session-id")
    if session is not None:
        await http.post(
            url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers={
                **MCP_HEADERS,
                **bearer("alice"),
                "mcp-session-id": session,
                "mcp-protocol-version": LEGACY,
            },
        )
    return response.status_code, session


async def _ping(http: httpx2.AsyncClient, url: str, session: str) -> int:
    headers = {**MCP_HEADERS, **bearer("alice"), "mcp-session-id": session, "mcp-protocol-version": LEGACY}
    response = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=headers)
    return response.status_code


async def test_a_principal_at_its_session_cap_loses_its_oldest_idle_session_or_gets_429(setup: Setup) -> None:
    async with http_gateway(setup, "--sessions-per-principal", "2") as gw:
        async with httpx2.AsyncClient(timeout=WAIT) as http, anyio.create_task_group() as tg:
            with anyio.fail_after(WAIT):
                first = await _open_session(http, gw.url)
                second = await _open_session(http, gw.url)
                third = await _open_session(http, gw.url)
                assert [first[0], second[0], third[0]] == [200, 200, 200]
                assert first[1] and second[1] and third[1]
                # The oldest idle session ends as its task unwinds: poll, bounded by fail_after.
                while await _ping(http, gw.url, first[1]) != 404:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                assert await _ping(http, gw.url, second[1]) == 200

                # Both remaining sessions busy (each holds its GET stream open): a new one is refused.
                streaming = anyio.Event()
                opened: list[int] = []

                async def hold_stream(session: str) -> None:
                    headers = {
                        "Accept": "text/event-stream",
                        **bearer("alice"),
                        "mcp-session-id": session,
                        "mcp-protocol-version": LEGACY,
                    }
                    async with http.stream("GET", gw.url, headers=headers) as response:
                        opened.append(response.status_code)
                        if len(opened) == 2:
                            streaming.set()
                        await anyio.sleep_forever()

                tg.start_soon(hold_stream, second[1])
                tg.start_soon(hold_stream, third[1])
                await streaming.wait()
                assert opened == [200, 200]
                refused = await _open_session(http, gw.url)
                assert refused[0] == 429 and refused[1] is None
                tg.cancel_scope.cancel()


def test_the_session_cap_refuses_to_start_when_the_sdk_moved_its_session_table() -> None:
    """Start-up, not the first request, names the moved seam (the seams: tests/test_sdk_seams.py)."""
    from mcp.server import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from gateway.server.http_limits import SdkSessions

    assert SdkSessions(StreamableHTTPSessionManager(Server("x"))).of("anyone") == []
    moved = StreamableHTTPSessionManager(Server("x"))
    del moved._server_instances  # what an SDK upgrade renaming it would look like
    with pytest.raises(RuntimeError, match=r"gateway\._sdk\.http_sessions"):
        SdkSessions(moved)
