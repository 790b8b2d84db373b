"""What a downstream that is not an MCP server (a REST API described by OpenAPI) offers besides
tools: nothing. The gateway asks every session for its resources, prompts, capabilities and
subscriptions; such a session answers as a server that has none of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError


class ToolsOnly:
    """Mixed into a session class that serves tools only."""

    principal: str | None = None
    instructions: str | None = None
    modern = True  # it asks nothing mid-call: no exchange is ever needed
    capabilities = types.ServerCapabilities(tools=types.ToolsCapability())
    resources: list[dict[str, Any]] = []
    resource_templates: list[dict[str, Any]] = []
    prompts: list[dict[str, Any]] = []
    notify_upstream: Callable[..., Awaitable[None]] | None = None
    roots_fallback: Callable[[], Awaitable[dict[str, Any] | None]] | None = None

    async def speaks_modern(self) -> bool:
        return True

    async def list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        return []

    async def watch_resource(self, uri: str, delta: int) -> None:
        return None

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        return None

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data=method)
