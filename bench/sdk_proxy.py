"""The least a proxy built on the MCP SDK does: the benchmark's floor for a pass-through.

    python bench/sdk_proxy.py DOWNSTREAM_COMMAND [ARG ...]          # stdio in, stdio downstream
    python bench/sdk_proxy.py --http PORT --backend-url URL         # HTTP in, HTTP downstream

A low-level ``Server`` whose ``tools/list`` is the downstream's listing and whose ``tools/call``
is forwarded with one ``mcp.Client`` kept connected to the downstream: over stdio (the SDK's
stdio transport both ways), or over streamable HTTP (the SDK's app on uvicorn in front, its
HTTP client behind). Nothing else: no keys, no store, no argument validation, no relaying of
notifications or of what the server asks. The ``sdk_proxy`` legs call it, so ``gw_pass /
sdk_proxy`` says how much the gateway's own work adds to what the SDK costs any proxy.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio
import httpx2
import mcp_types as types
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server


def proxy(downstream: Client, tools: types.ListToolsResult) -> Server[Any]:
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return tools

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await downstream.call_tool(params.name, params.arguments or {})

    return Server("sdk-proxy", on_list_tools=list_tools, on_call_tool=call_tool)


async def main(options: argparse.Namespace) -> None:
    if options.backend_url:
        http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0))
        transport: Any = streamable_http_client(options.backend_url, http_client=http)
    else:
        command, *args = options.command
        transport = stdio_client(StdioServerParameters(command=command, args=args, env=dict(os.environ)))
    async with Client(transport, cache=None) as downstream:
        server = proxy(downstream, await downstream.list_tools())
        if options.http is None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
            return
        app = server.streamable_http_app(stateless_http=True)
        config = uvicorn.Config(app, host="127.0.0.1", port=options.http, log_level="warning", lifespan="on")
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    parser.add_argument("--backend-url", help="the downstream's streamable HTTP endpoint")
    parser.add_argument("command", nargs="*", help="the downstream's command (stdio)")
    anyio.run(main, parser.parse_args())
