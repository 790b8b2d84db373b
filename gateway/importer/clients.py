"""Read an MCP client's configuration file into neutral entries.

Three shapes, one idea (a name → how to reach the server):

- Claude Desktop, ``claude_desktop_config.json``: ``{"mcpServers": {NAME: {command, args, env}}}``.
  Values are literal: nothing in them is expanded.
- Claude Code, ``.mcp.json``: ``mcpServers`` too, with ``type`` (``stdio`` | ``http`` | ``sse``),
  ``url`` and ``headers``; ``${VAR}`` and ``${VAR:-default}`` expand from the environment, the
  same syntax as a manifest. Servers run in the project folder (the file's folder).
- VS Code, ``mcp.json`` (or ``settings.json`` under ``"mcp"``): ``{"servers": {...}, "inputs": [...]}``,
  JSON with comments; ``${input:ID}``, ``${env:VAR}`` and ``${workspaceFolder}`` expand.

Which client a file belongs to decides how its ``${...}`` read and which snippet replaces it:
the file name says it (``claude_desktop_config.json``, ``.mcp.json``, ``mcp.json``), else the
shape (``servers`` is VS Code), else ``--client``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Client(enum.StrEnum):
    """The MCP client whose configuration is being read."""

    CLAUDE_DESKTOP = "claude-desktop"
    CLAUDE_CODE = "claude-code"
    VSCODE = "vscode"

    @property
    def label(self) -> str:
        return {"claude-desktop": "Claude Desktop", "claude-code": "Claude Code", "vscode": "VS Code"}[self]

    @property
    def servers_key(self) -> str:
        return "servers" if self is Client.VSCODE else "mcpServers"


class ConfigError(Exception):
    """The file cannot be read as an MCP client configuration (the message says why)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One server entry, as the file has it."""

    name: str
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    path: Path  # absolute
    client: Client
    entries: list[Entry]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # VS Code: input id → definition
    workspace: Path | None = None  # the folder servers run in (and ${workspaceFolder}), if known


def read_config(path: Path, client: Client | None = None) -> ClientConfig:
    """Parse ``path``; ``client`` overrides the detection."""
    path = path.expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(strip_jsonc(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with mcpServers or servers")
    if isinstance(data.get("mcp"), dict) and "servers" not in data and "mcpServers" not in data:
        data = data["mcp"]  # VS Code's settings.json: {"mcp": {"servers": ..., "inputs": ...}}
    client = client or _detect(path, data)
    servers = data.get(client.servers_key)
    if servers is None and client is not Client.VSCODE and isinstance(data.get("servers"), dict):
        servers = data["servers"]
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: no {client.servers_key!r} object: no MCP servers to import")
    entries: list[Entry] = []
    for name, raw in servers.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {client.servers_key}.{name}: expected an object")
        entries.append(Entry(str(name), raw))
    inputs: dict[str, dict[str, Any]] = {}
    for item in data.get("inputs") or []:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            inputs[item["id"]] = item
    return ClientConfig(path, client, entries, inputs, _workspace(path, client))


def _detect(path: Path, data: dict[str, Any]) -> Client:
    if path.name == "claude_desktop_config.json":
        return Client.CLAUDE_DESKTOP
    if path.name == ".mcp.json":
        return Client.CLAUDE_CODE
    if isinstance(data.get("servers"), dict) or path.name in ("mcp.json", "settings.json"):
        return Client.VSCODE
    # An mcpServers file by another name: Claude Code's shape is a superset of Desktop's.
    return Client.CLAUDE_CODE


def _workspace(path: Path, client: Client) -> Path | None:
    if client is Client.CLAUDE_CODE:
        return path.parent  # a project's .mcp.json: its servers run in the project folder
    if client is Client.VSCODE and path.parent.name == ".vscode":
        return path.parent.parent
    return None  # Claude Desktop, a VS Code user profile: no project folder


def strip_jsonc(text: str) -> str:
    """JSON with comments (``//``, ``/* */``) and trailing commas → JSON, positions kept.

    VS Code writes and accepts both; each dropped character becomes a space (newlines stay),
    so a JSON error still points at the right line and column.
    """
    out = list(text)
    i, n = 0, len(text)
    in_string = False
    last_comma: int | None = None  # a comma not yet followed by anything but blanks/comments
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
            continue
        if c == '"':
            in_string = True
            last_comma = None
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
            out[i:end] = " " * (end - i)
            i = end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out[i:end] = ["\n" if ch == "\n" else " " for ch in text[i:end]]
            i = end
            continue
        elif c == ",":
            last_comma = i
        elif c in "}]":
            if last_comma is not None:
                out[last_comma] = " "
            last_comma = None
        elif not c.isspace():
            last_comma = None
        i += 1
    return "".join(out)
