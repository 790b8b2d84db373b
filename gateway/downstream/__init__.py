"""Downstream MCP servers: one supervised client session each, owned by a pool."""

from gateway.downstream.errors import (
    DownstreamError,
    DownstreamLost,
    DownstreamRejected,
    DownstreamUnavailable,
)
from gateway.downstream.pool import DownstreamPool
from gateway.downstream.session import DownstreamSession, State

__all__ = [
    "DownstreamError",
    "DownstreamLost",
    "DownstreamPool",
    "DownstreamRejected",
    "DownstreamSession",
    "DownstreamUnavailable",
    "State",
]
