"""FastMCP's proxy in front of the trivial server, served over stdio.

Runs in ``bench/.venv-fastmcp`` (fastmcp is not a gateway dependency):
``fastmcp_proxy.py PYTHON SERVER_SCRIPT [--reuse]``.

Default: ``create_proxy(StdioTransport(...))``, FastMCP's recommended shape: the backend
subprocess is kept alive, and each proxied request gets a fresh backend client session.
``--reuse``: one connected backend ``Client`` shared by every request (FastMCP's fastest shape;
it warns about context mixing under concurrency).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.server import create_proxy


async def main(python: str, server: str, reuse: bool) -> None:
    transport = StdioTransport(command=python, args=[server])
    if reuse:
        async with Client(transport) as backend:
            proxy: Any = create_proxy(backend, name="fastmcp-proxy")
            await proxy.run_async(transport="stdio", show_banner=False)
    else:
        proxy = create_proxy(transport, name="fastmcp-proxy")
        await proxy.run_async(transport="stdio", show_banner=False)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], "--reuse" in sys.argv[3:])
