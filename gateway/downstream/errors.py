"""What can go wrong talking to a downstream, as the idempotency guard needs to see it.

    DownstreamUnavailable (gateway.errors)   not sent: the key is released, a retry is safe
    DownstreamError                          the call reached (or may have reached) the downstream
    ├── DownstreamLost                       sent, outcome unknown: timeout, lost connection, cancelled
    └── DownstreamRejected                   the downstream answered with a JSON-RPC error

The split that matters is sent vs not sent: only ``DownstreamUnavailable`` proves that
nothing ran. SDK errors are mapped once, in ``session.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from gateway.errors import DownstreamUnavailable

LostReason = Literal["timeout", "connection_lost", "cancelled"]

__all__ = ["DownstreamError", "DownstreamLost", "DownstreamRejected", "DownstreamUnavailable", "LostReason"]


class DownstreamError(Exception):
    """The request was written to the downstream; something other than a result came back."""


class DownstreamLost(DownstreamError):
    """Sent, and no result came back: the downstream may or may not have acted."""

    def __init__(self, message: str, *, reason: LostReason) -> None:
        super().__init__(message)
        self.reason: LostReason = reason


class DownstreamRejected(DownstreamError):
    """The downstream answered with a JSON-RPC error (unknown tool, bad params, internal error)."""

    def __init__(self, message: str, *, code: int, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data
