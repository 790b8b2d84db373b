"""A trivial downstream MCP server for the benchmark, over stdio.

``noop`` carries no annotations, so the gateway treats it as side-effecting (it gains a required
``idempotency_key``); ``noop_ro`` is the same tool marked ``readOnlyHint``, which the gateway
passes through. Both return their argument and do nothing else.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

mcp = MCPServer("trivial")


@mcp.tool()
def noop(x: int) -> int:
    """Return x (side-effecting as far as the gateway knows)."""
    return x


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def noop_ro(x: int) -> int:
    """Return x (read-only)."""
    return x


if __name__ == "__main__":
    mcp.run()
