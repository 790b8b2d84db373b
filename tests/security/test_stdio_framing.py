"""Item 11: over stdio, a line that is not a message gets a JSON-RPC error, never silence.

A real gateway process over raw pipes: the client sends a line longer than the limit, a line
nested deeper than the parser goes, garbage, and JSON that is not a request; each gets its
error reply (parse error, id null; or invalid request with the request's id), and a ping
right after each still gets its answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.server.stdio import MAX_MESSAGE_BYTES
from tests.security.kit import RawGateway
from tests.support import Setup

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    return made


def _assert_error(reply: dict[str, object], code: int, request_id: object = None) -> None:
    assert reply.get("id") == request_id, reply
    error = reply.get("error")
    assert isinstance(error, dict) and error.get("code") == code, reply


def test_a_line_longer_than_the_limit_gets_a_parse_error_and_the_gateway_keeps_serving(setup: Setup) -> None:
    with RawGateway(setup) as gateway:
        gateway.handshake()
        too_long = (
            b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"pad":"' + b"x" * MAX_MESSAGE_BYTES + b'"}}'
        )
        gateway.send(too_long + b"\n")
        _assert_error(gateway.read_message(), PARSE_ERROR)
        assert gateway.alive()
        # The tail of the dropped line was not read as a message of its own: one reply, not two.
        gateway.send(b'{"jsonrpc":"2.0","id":8,"method":"ping"}\n')
        assert gateway.read_message() == {"jsonrpc": "2.0", "id": 8, "result": {}}


def test_a_line_nested_too_deep_gets_a_parse_error_and_the_gateway_keeps_serving(setup: Setup) -> None:
    with RawGateway(setup) as gateway:
        gateway.handshake()
        deep = b'{"jsonrpc":"2.0","id":9,"method":"ping","params":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}"
        gateway.send(deep + b"\n")
        _assert_error(gateway.read_message(), PARSE_ERROR)
        assert gateway.alive()


def test_garbage_gets_a_parse_error_and_json_that_is_no_request_an_invalid_request(setup: Setup) -> None:
    with RawGateway(setup) as gateway:
        gateway.handshake()
        gateway.send(b"this is not json\n")
        _assert_error(gateway.read_message(), PARSE_ERROR)
        gateway.send(b'{"jsonrpc":"2.0","id":"abc","method":42}\n')
        _assert_error(gateway.read_message(), INVALID_REQUEST, "abc")
        gateway.send(b"[1, 2, 3]\n")
        _assert_error(gateway.read_message(), INVALID_REQUEST)
        # A malformed notification gets no answer (JSON-RPC), and the next request is served.
        gateway.send(b'{"jsonrpc":"2.0","method":17}\n')
        assert gateway.alive()
