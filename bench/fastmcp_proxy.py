"""FastMCP's proxy in front of the benchmark downstream (the reference a Python user would pick).

Runs in ``bench/.venv-fastmcp`` (fastmcp is not a gateway dependency):

    fastmcp_proxy.py --backend-stdio PYTHON SCRIPT | --backend-url URL  [--http PORT] [--per-request]

Front: stdio by default, streamable HTTP on 127.0.0.1:PORT with ``--http``.
Backend: default is one connected backend ``Client`` reused by every request (FastMCP's fastest
shape, and what the targets compare against); ``--per-request`` passes the transport instead, so
that FastMCP opens a fresh backend session per request (its default for a transport target).
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from fastmcp.server import create_proxy


async def main(options: argparse.Namespace) -> None:
    transport: Any
    if options.backend_url:
        transport = StreamableHttpTransport(options.backend_url)
    else:
        python, script = options.backend_stdio
        transport = StdioTransport(command=python, args=[script], env=options.env)
    front: dict[str, Any] = {"transport": "stdio"}
    if options.http is not None:
        front = {"transport": "http", "host": "127.0.0.1", "port": options.http, "log_level": "warning"}
    if options.per_request:
        proxy: Any = create_proxy(transport, name="fastmcp-proxy")
        await proxy.run_async(show_banner=False, **front)
        return
    async with Client(transport) as backend:
        proxy = create_proxy(backend, name="fastmcp-proxy")
        await proxy.run_async(show_banner=False, **front)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend-stdio", nargs=2, metavar=("PYTHON", "SCRIPT"))
    parser.add_argument("--backend-url")
    parser.add_argument("--http", type=int, metavar="PORT")
    parser.add_argument("--per-request", action="store_true")
    parser.add_argument("--ledger", help="the backend's BENCH_LEDGER (stdio backend)")
    args = parser.parse_args()
    args.env = {"BENCH_LEDGER": args.ledger} if args.ledger else None
    anyio.run(main, args)
