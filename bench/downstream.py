"""The benchmark's downstream MCP server: one tool with no I/O, one with a durable effect.

    python bench/downstream.py [--http PORT]      # stdio by default

``noop_ro(x)`` is read-only (``readOnlyHint``) and does nothing: the gateway passes it through.
``append(x)`` carries no annotations, so the gateway treats it as side-effecting; it appends one
line ``{"x": x, "pid": ...}`` to the ledger (``$BENCH_LEDGER``) and fsyncs it before returning,
like a real effect that must survive a crash. The ledger is also how the replica leg counts
duplicate executions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

mcp = MCPServer("bench-downstream", log_level="WARNING")
_ledger: int | None = None


def _ledger_fd() -> int:
    global _ledger
    if _ledger is None:
        path = os.environ.get("BENCH_LEDGER") or "bench-ledger.jsonl"
        _ledger = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _ledger


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def noop_ro(x: int) -> int:
    """Return x (read-only, no I/O)."""
    return x


@mcp.tool()
def append(x: int) -> int:
    """Append x to the ledger and fsync it; return x (side-effecting)."""
    fd = _ledger_fd()
    os.write(fd, (json.dumps({"x": x, "pid": os.getpid()}) + "\n").encode())
    os.fsync(fd)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    options = parser.parse_args()
    if options.http is None:
        mcp.run()
        return
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    anyio.run(lambda: mcp.run_streamable_http_async(host="127.0.0.1", port=options.http))


if __name__ == "__main__":
    main()
