"""Test kit for the HTTP gateway: start ``idem-gateway serve --transport http`` as a process.

Each test starts the gateway subprocess on a free port with a manifest for the example server,
waits for ``/healthz`` (bounded poll), and talks to ``/mcp`` with ``mcp.Client`` and a bearer
header, or with plain HTTP where the point is the HTTP answer (401, 413, 421).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import Process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Setup, http_client

WAIT = 30.0
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}
MODERN = "2026-07-28"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def parse(text: str) -> dict[str, float]:
    """Samples of a Prometheus exposition text by ``name{labels}``."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bearer(principal: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[principal]}"}


@dataclass
class HttpGateway:
    """A running ``idem-gateway serve --transport http`` subprocess."""

    process: Process
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    @asynccontextmanager
    async def client(self, principal: str | None = "alice", *, mode: str = "auto") -> AsyncIterator[Client]:
        """A real MCP client; ``principal=None`` sends no Authorization header."""
        headers = bearer(principal) if principal is not None else None
        async with (
            http_client(headers=headers) as http,
            Client(streamable_http_client(self.url, http_client=http), mode=mode, cache=None) as client,
        ):
            yield client

    async def get(self, path: str, **kwargs: Any) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=WAIT) as http:
            return await http.get(self.base + path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=WAIT) as http:
            return await http.post(self.base + path, **kwargs)

    async def metrics(self, principal: str | None = "alice") -> dict[str, float]:
        response = await self.get("/metrics", headers=bearer(principal) if principal else {})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(response.text)

    async def waiting(self) -> int:
        """Duplicates this replica has parked until their key's first call ends (``/metrics``)."""
        return int((await self.metrics())["idem_gateway_waiting"])


def write_tokens(path: Path) -> Path:
    lines = [f'{p} = "{hashlib.sha256(t.encode()).hexdigest()}"' for p, t in TOKENS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def serve_argv(setup: Setup, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--transport",
        "http",
        "--port",
        str(port),
        "--manifests",
        str(setup.manifests),
        "--store",
        setup.store,
        *extra,
    ]


@asynccontextmanager
async def http_gateway(
    setup: Setup,
    *extra: str,
    tokens: bool = True,
    name: str = "gateway",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[HttpGateway]:
    """Start the gateway, wait for /healthz, stop it with SIGTERM (bounded) afterwards.

    ``env``: set in the gateway's environment (after any IDEM_GATEWAY_TOKENS of ours is removed).
    """
    port = free_port()
    log = setup.tmp / f"{name}-{port}.log"
    env = {**{k: v for k, v in os.environ.items() if k != "IDEM_GATEWAY_TOKENS"}, **(env or {})}
    if tokens:
        extra = (*extra, "--tokens", str(write_tokens(setup.tmp / "tokens.toml")))
    with log.open("wb") as errlog:
        process = await anyio.open_process(
            serve_argv(setup, port, *extra), stdout=subprocess.DEVNULL, stderr=errlog, cwd=setup.tmp, env=env
        )
        gateway = HttpGateway(process, port, log)
        try:
            await _wait_healthy(gateway)
            yield gateway
        finally:
            await _stop(process)


async def _wait_healthy(gateway: HttpGateway) -> None:
    with anyio.fail_after(WAIT):
        async with httpx2.AsyncClient(timeout=5.0) as http:
            while True:
                if gateway.process.returncode is not None:
                    pytest.fail(f"the gateway exited early:\n{gateway.log.read_text()}")
                try:
                    if (await http.get(f"{gateway.base}/healthz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.05)


async def _stop(process: Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        with anyio.fail_after(WAIT):
            await process.wait()
    except TimeoutError:
        process.kill()
        raise


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without sticky sessions: each request goes to the next replica's port."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent = 0
        self.calls: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.sent % len(self.ports)]
        self.sent += 1
        if request.method == "POST" and b'"tools/call"' in request.content:
            self.calls.append(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def invoice(client: Client, key: str | None, amount: float = 12.5) -> Any:
    arguments: dict[str, Any] = {"customer": "acme", "amount": amount}
    if key is not None:
        arguments["idempotency_key"] = key
    return await client.call_tool("create_invoice", arguments)
