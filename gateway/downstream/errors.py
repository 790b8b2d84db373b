"""What can go wrong talking to a downstream, as the idempotency guard needs to see it.

    DownstreamUnavailable (gateway.errors)   provably not sent: the key is released, a retry is safe
    DownstreamError                          the call reached (or may have reached) the downstream
    ├── DownstreamLost                       sent, outcome unknown: timeout, lost connection, cancelled,
    │                                        an HTTP 5xx, a JSON-RPC error that may come after execution
    └── DownstreamRejected                   the downstream refused the request before executing it

The split that matters is "did it run": only ``DownstreamUnavailable`` and ``DownstreamRejected``
prove that nothing ran. Everything else that is not a result is ``DownstreamLost``. Foreign
(SDK, transport) errors are mapped once, in ``session.py``.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import mcp_types as types

from gateway.errors import DownstreamUnavailable, NotExecuted
from gateway.outcomes import Outcome

LostReason = Literal["timeout", "connection_lost", "cancelled", "error_after_send"]

# JSON-RPC errors that by the protocol come before a request is executed: the message could
# not be parsed or was not a valid request, the method does not exist, the params are invalid
# (an unknown tool, arguments the tool's schema refuses). Any other error code (-32603 internal
# error, server-defined codes) may be raised after the tool acted.
BEFORE_EXECUTION_CODES: Final = frozenset(
    {types.PARSE_ERROR, types.INVALID_REQUEST, types.METHOD_NOT_FOUND, types.INVALID_PARAMS}
)


def rejected_before_execution_status(status: int) -> bool:
    """An HTTP status that proves the request was refused before it ran.

    4xx is the client's fault and nothing ran, except 408 (the server gave up waiting, maybe
    mid-request) and 429 (some proxies answer it after forwarding). 5xx (a 504 from a proxy
    after the tool ran) proves nothing.
    """
    return 400 <= status < 500 and status not in (408, 429)


__all__ = [
    "BEFORE_EXECUTION_CODES",
    "DownstreamError",
    "DownstreamLost",
    "DownstreamRejected",
    "DownstreamUnavailable",
    "LostReason",
    "rejected_before_execution_status",
]


class DownstreamError(Exception):
    """The request was written to the downstream; something other than a result came back."""


class DownstreamLost(DownstreamError):
    """Sent, and no result came back: the downstream may or may not have acted."""

    def __init__(self, message: str, *, reason: LostReason, code: int | None = None) -> None:
        super().__init__(message)
        self.reason: LostReason = reason
        self.code = code  # the JSON-RPC error code, when an error came back after sending


class DownstreamRejected(DownstreamError, NotExecuted):
    """The downstream refused the request before executing it (``BEFORE_EXECUTION_CODES``, or
    an HTTP 4xx other than 408/429): nothing ran, so the key can be released."""

    audit_outcome = Outcome.INVALID

    def __init__(self, message: str, *, code: int, data: Any = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data
        self.http_status = http_status
