"""Test kit for transparency: the same client against a server directly and through the gateway.

Servers: the Node reference servers from npm (2025-11-25 era), and ``tests/servers/relay_server.py``
(both eras; behind the gateway it speaks 2026-07-28). Clients: the Python SDK ``Client`` in
``mode="auto"`` (2026-07-28 with the gateway) and ``mode="legacy"`` (2025-11-25), with scripted
answers to what a server asks (``Answers``) that record what they were asked.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import FileUrl

from tests.http.kit import HttpGateway, bearer
from tests.support import REPO, Setup, http_client, npm_package, toml_value

EVERYTHING = "@modelcontextprotocol/server-everything@2026.8.31"
EVERYTHING_ENTRY = "@modelcontextprotocol/server-everything/dist/index.js"
FILESYSTEM = "@modelcontextprotocol/server-filesystem@2026.8.31"
FILESYSTEM_ENTRY = "@modelcontextprotocol/server-filesystem/dist/index.js"
RELAY_SERVER = REPO / "tests" / "servers" / "relay_server.py"
MODES = ["auto", "legacy"]  # 2026-07-28 and 2025-11-25 clients
WAIT = 30.0


def everything_server() -> Path:
    return npm_package(EVERYTHING, EVERYTHING_ENTRY)


def filesystem_server() -> Path:
    return npm_package(FILESYSTEM, FILESYSTEM_ENTRY)


def manifest(
    folder: Path,
    name: str,
    server: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    tools: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Any manifest: ``server`` is the [server] table (name added)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[server]", f"name = {toml_value(name)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in server.items()]
    lines += ["", "[defaults]", *(f"{k} = {toml_value(v)}" for k, v in (defaults or {}).items())]
    for tool, table in (tools or {}).items():
        lines += ["", f"[tools.{tool}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def everything_manifest(
    setup: Setup,
    name: str = "everything",
    *,
    tools: Mapping[str, Mapping[str, Any]] | None = None,
    **server: Any,
) -> StdioServerParameters:
    """server-everything behind the gateway, its tools read-only unless ``tools`` says otherwise;
    returns its direct parameters."""
    entry = everything_server()
    table = {"command": "node", "args": [str(entry), "stdio"], **server}
    manifest(setup.manifests, name, table, defaults={"side_effects": False}, tools=tools)
    return StdioServerParameters(command="node", args=[str(entry), "stdio"])


def relay_manifest(
    setup: Setup, name: str = "relay", *, label: str | None = None, **server: Any
) -> StdioServerParameters:
    """The relay server behind the gateway (stdio); returns its direct parameters."""
    env = {"RELAY_LEDGER": str(setup.tmp / "relay-ledger.jsonl"), "RELAY_LABEL": label or f"label-{name}"}
    server.setdefault("env", env)
    manifest(setup.manifests, name, {"command": sys.executable, "args": [str(RELAY_SERVER)], **server})
    return StdioServerParameters(command=sys.executable, args=[str(RELAY_SERVER)], env=env)


@dataclass
class Answers:
    """A client's answers to what a server asks, and what it was asked (method, params)."""

    label: str
    asked: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    arrived: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event | None = None  # answers wait for it when set
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    notifications: list[types.ServerNotification] = field(default_factory=list)

    async def _asked(self, method: str, params: Any) -> None:
        self.asked.append(
            (method, params.model_dump(by_alias=True, mode="json", exclude_none=True) if params else {})
        )
        self.arrived.set()
        if self.release is not None:
            with anyio.fail_after(WAIT):
                await self.release.wait()

    async def sampling(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        await self._asked("sampling/createMessage", params)
        content = params.messages[0].content
        prompt = content.text if isinstance(content, types.TextContent) else ""
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"{self.label}:{prompt}"), model="m"
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        await self._asked("elicitation/create", params)
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ElicitResult(action="accept")
        return types.ElicitResult(action="accept", content={"answer": self.label, "name": self.label})

    async def roots(self, context: Any) -> types.ListRootsResult:
        await self._asked("roots/list", None)
        return types.ListRootsResult(
            roots=[types.Root(uri=FileUrl(f"file:///{self.label}"), name=self.label)]
        )

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def message(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            self.notifications.append(message)

    def callbacks(
        self, *, sampling: bool = True, elicitation: bool = True, roots: bool = True
    ) -> dict[str, Any]:
        return {
            "sampling_callback": self.sampling if sampling else None,
            "elicitation_callback": self.elicitation if elicitation else None,
            "list_roots_callback": self.roots if roots else None,
            "logging_callback": self.log,
            "message_handler": self.message,
        }


@asynccontextmanager
async def direct(params: StdioServerParameters, mode: str, **kwargs: Any) -> AsyncIterator[Client]:
    async with Client(params, mode=mode, cache=None, **kwargs) as client:
        yield client


@asynccontextmanager
async def through(
    setup: Setup, mode: str, *, env: Mapping[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[Client]:
    """A client of a gateway subprocess over stdio (``env`` added to the gateway's environment)."""
    async with Client(setup.gateway_params(env=env), mode=mode, cache=None, **kwargs) as client:
        yield client


@asynccontextmanager
async def over_http(gateway: HttpGateway, principal: str, mode: str, **kwargs: Any) -> AsyncIterator[Client]:
    """A client of an HTTP gateway as ``principal``."""
    async with (
        http_client(headers=bearer(principal)) as http,
        Client(
            streamable_http_client(gateway.url, http_client=http), mode=mode, cache=None, **kwargs
        ) as client,
    ):
        yield client


def text_of(result: Any) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))
