"""The client entry that replaces the imported servers with the gateway, in that client's format.

The gateway needs the variables the manifests refer to, so the entry passes them in its
``env`` the way that client can without a literal: Claude Code expands ``${VAR}`` from the
shell; VS Code prompts once for an ``${input:...}`` and keeps it in its secret storage (a value
that was a literal becomes a password input); Claude Desktop expands nothing, so its entry
holds placeholders saying where the value was. No value is ever printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.importer.clients import Client
from gateway.importer.plan import Variable

ENTRY_NAME = "idem-gateway"


def gateway_command() -> list[str]:
    """How a client starts this gateway: the console script next to this interpreter, else -m."""
    script = Path(sys.executable).with_name("idem-gateway")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def client_snippet(client: Client, variables: Sequence[Variable], manifests: Path) -> dict[str, Any]:
    """``{"mcpServers": {"idem-gateway": ...}}`` (or VS Code's ``servers`` + ``inputs``)."""
    command, *prefix = gateway_command()
    entry: dict[str, Any] = {}
    if client is not Client.CLAUDE_DESKTOP:
        entry["type"] = "stdio"
    entry["command"] = command
    entry["args"] = [*prefix, "serve", "--manifests", str(manifests)]
    env: dict[str, str] = {}
    inputs: list[dict[str, Any]] = []
    for var in variables:
        if client is Client.CLAUDE_DESKTOP:
            env[var.name] = f"<the value of {var.origins[0]}>"
        elif client is Client.CLAUDE_CODE:
            env[var.name] = var.client_ref or "${" + var.name + "}"
        elif var.client_ref is not None:
            env[var.name] = var.client_ref
            if var.input is not None and var.input not in inputs:
                inputs.append(var.input)
        else:
            env[var.name] = "${input:" + var.name + "}"
            inputs.append(
                {
                    "type": "promptString",
                    "id": var.name,
                    "description": f"{var.name} for idem-gateway (was a literal: {', '.join(var.origins)})",
                    "password": True,
                }
            )
    if env:
        entry["env"] = env
    body: dict[str, Any] = {client.servers_key: {ENTRY_NAME: entry}}
    if client is Client.VSCODE and inputs:
        body["inputs"] = inputs
    return body


def render_snippet(client: Client, variables: Sequence[Variable], manifests: Path) -> str:
    return json.dumps(client_snippet(client, variables, manifests), indent=2, ensure_ascii=False)
