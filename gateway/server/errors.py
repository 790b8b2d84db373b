"""The one place where gateway refusals become MCP tool results.

A refusal is a tool result (``isError: true``), not a JSON-RPC error: the agent reads the
sentence and the code and decides what to do next. Its table of codes is the contract's.
"""

from __future__ import annotations

from typing import Any

from gateway import meta
from gateway.errors import GatewayError


def refusal_result(error: GatewayError) -> dict[str, Any]:
    """A CallToolResult dict for a refusal; nothing ran downstream because of this call."""
    return {
        "content": [{"type": "text", "text": f"{error.message} [{error.code}]"}],
        "isError": True,
        "_meta": {meta.ERROR: error.to_meta()},
    }
