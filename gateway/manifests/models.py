"""Validated policy: what the loader hands to the rest of the gateway.

Everything here is plain, frozen data. Durations are seconds (float). Paths are absolute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

KEY_ARGUMENT = "idempotency_key"
KEY_HEADER = "Idempotency-Key"  # the IETF draft's header: where an OpenAPI downstream gets the key


@dataclass(frozen=True, slots=True)
class ForwardKey:
    """How a tool receives the idempotency key downstream."""

    kind: Literal["argument", "meta", "header"]
    name: str


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``approve`` condition: a test on one top-level argument (``gateway.server.approval``)."""

    argument: str
    op: Literal["above", "at_least", "equals", "in"]
    value: Any  # a number (above, at_least), any JSON value (equals), a list of them (in)


Approve = bool | tuple[Condition, ...]
"""``approve``: never (False), every new key (True), or a new key whose arguments meet any condition."""


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """One tool's idempotency policy: `[defaults]` with the tool's own table laid over it."""

    side_effects: bool | None = None  # None = "auto": decided from annotations at list time
    retention: float = 24 * 3600.0
    in_flight: Literal["wait", "reject"] = "wait"
    wait: float = 30.0
    store_errors: bool = True
    expired: Literal["execute", "reject"] = "execute"
    cancel: Literal["finish", "forward"] = "finish"
    fingerprint_exclude: tuple[str, ...] = ()
    forward_key: ForwardKey | None = None
    redact: tuple[str, ...] = ()
    key_from: str | None = None
    cost: float | None = None
    approve: Approve = False
    approval_timeout: float = 120.0  # how long a person has to answer before approval_unavailable


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One downstream (an MCP server, or an HTTP API described by OpenAPI) and the policy for its tools."""

    name: str
    source: Path  # the manifest file it came from
    transport: Literal["stdio", "http", "openapi"] = "stdio"
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # already expanded
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # already expanded
    openapi_spec: str | None = None  # openapi: an absolute file path or an http(s) URL
    base_url: str | None = None  # openapi: operation paths are appended to it
    operations: tuple[str, ...] | None = None  # openapi: the tools to make; None = every operation
    key_header: str = KEY_HEADER  # openapi: the header the idempotency key is sent in
    tool_prefix: str = ""  # also put in front of its prompts' names
    resource_prefix: str = ""  # put in front of its resource URIs and templates
    timeout: float = 30.0  # how long a call may go without a word from the server
    max_timeout: float = 600.0  # progress restarts timeout, up to this long from the start
    expose: Literal["all", "listed"] = "all"
    sessions: Literal["per_principal", "shared"] = "per_principal"
    defaults: ToolPolicy = field(default_factory=ToolPolicy)
    tools: dict[str, ToolPolicy] = field(default_factory=dict)  # keyed by downstream tool name
    # Every value a `${VAR}` took from the environment, wherever it was expanded (url, command,
    # args, env, cwd, headers): a secret for output purposes.
    env_values: tuple[str, ...] = ()

    def policy_for(self, downstream_name: str) -> ToolPolicy:
        return self.tools.get(downstream_name, self.defaults)

    def exposes(self, downstream_name: str) -> bool:
        return self.expose == "all" or downstream_name in self.tools

    def exposed_name(self, downstream_name: str) -> str:
        """The name a client sees for one of this server's tools (or prompts)."""
        return self.tool_prefix + downstream_name

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in events, logs or error messages: whatever came from
        the environment, every env and header value, and the URL's query and password."""
        found = [*self.env_values, *self.env.values(), *self.headers.values()]
        if self.url:
            try:
                parts = urlsplit(self.url)
                found += [parts.query, parts.password or ""]
            except ValueError:  # the loader refuses such a URL; never fail while hiding secrets
                found.append(self.url)
        # Longest first: a value that contains another (``Bearer <token>``, ``<token>``) is
        # masked whole by whoever replaces them in order.
        return tuple(sorted(dict.fromkeys(v for v in found if v), key=len, reverse=True))
