"""Test kit: write manifests, start the real gateway over stdio, read the example server's ledger.

Everything here is real: the gateway runs as ``python -m gateway serve`` in a subprocess, the
downstream is ``examples/payments_server.py`` in another, the store is a SQLite file (or the
PostgreSQL server the tests started). Waits are bounded and gated on files or events.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import ReadResourceResult, RequestParamsMeta, TextContent, TextResourceContents

from gateway import meta
from tests import node

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SERVER = REPO / "examples" / "payments_server.py"
DEAF = REPO / "tests" / "servers" / "deaf.py"
NO_REPLAY_CACHE = ("--replay-cache", "0")
"""For a test that ends a retention by editing the store: the clock would end it for the gateway's
in-memory copy of a completed record too, a hand edit of the row does not reach that copy."""


def http_client(headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    """An HTTP client for ``streamable_http_client``, with the SDK transport's own timeouts (30 s,
    300 s to read a response stream), made with the public httpx2 API."""
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))


def alive(pid: int) -> bool:
    """Running: it exists and is not a zombie (an exited child waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # reaped between the kill(0) and the read
        return False
    return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


NODE_CACHE = node.NODE_CACHE


def npm_package(spec: str, entry: str) -> Path:
    """``NODE_CACHE/node_modules/<entry>``, installing ``spec`` with npm first if it is missing.

    Without Node.js and npm the calling test is skipped, except in CI (``CI`` set), where it fails.
    """
    return node.npm_package(spec, entry)


def system_tool(name: str) -> str:
    """The path of a Debian tool a test drives (``strace``, ``faketime``): skipped locally when it
    is missing, failed in CI (``CI`` set), where ``.ci/run`` installs it."""
    path = shutil.which(name)
    if path is None:
        node.unavailable(f"{name} is needed (apt-get install {name}; .ci/run installs it)")
    return path


def new_key() -> str:
    return str(uuid.uuid4())


def forwarded_key(key: str, principal: str = "local") -> str:
    """The key a deduping downstream receives for ``key`` from the gateways of this test session
    (scoped to the principal, under the session's secret: see ``Fingerprinter.forwarded_key``)."""
    from gateway.idempotency.fingerprint import Fingerprinter
    from gateway.secret import default_secret_file, load_or_create

    return Fingerprinter(load_or_create(default_secret_file())).forwarded_key(principal, key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_manifest(
    folder: Path,
    *,
    name: str = "payments",
    ledger: Path,
    server: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    tools: Mapping[str, Mapping[str, Any]] | None = None,
    http_url: str | None = None,
    guarded_by: Path | None = None,
    deaf: bool = False,
) -> Path:
    """A manifest for the example server (stdio unless ``http_url``).

    ``guarded_by``: the downstream refuses to start while that file is missing, so a test can
    make it unreachable and then reachable again. ``deaf``: the downstream never hears a
    cancellation (``tests/servers/deaf.py``), so a call the gateway gave up on still runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[server]", f"name = {toml_value(name)}"]
    args = [str(EXAMPLE_SERVER)]
    if guarded_by is not None:
        args = [
            "-c",
            "import os, runpy, sys; os.path.exists(sys.argv[1]) or sys.exit(3); "
            "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')",
            str(guarded_by),
            str(EXAMPLE_SERVER),
        ]
    if deaf:
        args = [str(DEAF), sys.executable, *args]
    if http_url is None:
        lines += [
            'transport = "stdio"',
            f"command = {toml_value(sys.executable)}",
            f"args = {toml_value(args)}",
            f"env = {toml_value({'PAYMENTS_LEDGER': str(ledger)})}",
        ]
    else:
        lines += ['transport = "http"', f"url = {toml_value(http_url)}"]
    for k, v in (server or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    lines.append("")
    lines.append("[defaults]")
    for k, v in (defaults or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    for tool, table in (tools or {}).items():
        lines.append("")
        lines.append(f"[tools.{tool}]")
        for k, v in table.items():
            lines.append(f"{k} = {toml_value(v)}")
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def jsonrpc_line(message: Mapping[str, Any]) -> bytes:
    """One JSON-RPC message as a stdio client writes it: a line."""
    return json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"


def initialize_lines(capabilities: Mapping[str, Any] | None = None) -> bytes:
    """A 2025-11-25 client's opening by hand: ``initialize`` (id 1), then ``initialized``."""
    hello = {
        "protocolVersion": "2025-11-25",
        "capabilities": dict(capabilities or {}),
        "clientInfo": {"name": "script", "version": "0"},
    }
    return jsonrpc_line({"id": 1, "method": "initialize", "params": hello}) + jsonrpc_line(
        {"method": "notifications/initialized"}
    )


def call_line(ident: int, name: str, arguments: Mapping[str, Any]) -> bytes:
    return jsonrpc_line(
        {"id": ident, "method": "tools/call", "params": {"name": name, "arguments": dict(arguments)}}
    )


def read_ledger(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]


def executions(ledger: Path, tool: str) -> list[dict[str, Any]]:
    return [
        line for line in read_ledger(ledger) if line.get("tool") == tool and line.get("phase") != "finished"
    ]


WAITING_LINE = "a duplicate waits for its key's first call"
"""What a gateway logs at DEBUG once for each duplicate it parks (``Guard`` in
``gateway/idempotency/guard.py``): how a test sees a stdio gateway's waiters from outside."""


def parked(log: Path) -> int:
    """How many duplicates the gateway writing ``log`` (at DEBUG) has parked so far."""
    if not log.exists():
        return 0
    return log.read_text(errors="replace").count(WAITING_LINE)


async def wait_for(predicate: Any, *, timeout: float = 20.0, interval: float = 0.01) -> None:
    """Poll a condition that another process makes true (a file, a ledger line), bounded."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - another process makes it true
            await anyio.sleep(interval)


@dataclass
class Setup:
    """One test's world: a manifests folder, a ledger, a store."""

    tmp: Path
    store: str
    ledger: Path = field(init=False)
    manifests: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = self.tmp / "ledger.jsonl"
        self.manifests = self.tmp / "manifests"

    def manifest(self, **kwargs: Any) -> Path:
        kwargs.setdefault("ledger", self.ledger)
        return write_manifest(self.manifests, **kwargs)

    def gateway_params(
        self, *extra: str, principal: str = "local", env: Mapping[str, str] | None = None
    ) -> StdioServerParameters:
        return StdioServerParameters(
            command=sys.executable,
            args=[
                "-m",
                "gateway",
                "serve",
                "--manifests",
                str(self.manifests),
                "--store",
                self.store,
                "--principal",
                principal,
                *extra,
            ],
            env={**os.environ, **(env or {})},
            cwd=str(self.tmp),
        )

    @asynccontextmanager
    async def client(
        self,
        *extra: str,
        principal: str = "local",
        mode: str = "auto",
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> AsyncIterator[Client]:
        """A real MCP client talking to a real gateway subprocess over stdio.

        ``log``: the gateway logs at DEBUG into this file (``parked(log)`` reads its waiters).
        """
        if log is None:
            params = self.gateway_params(*extra, principal=principal, env=env)
            async with Client(params, mode=mode, cache=None) as client:
                yield client
            return
        env = {**(env or {}), "IDEM_GATEWAY_LOG_LEVEL": "DEBUG"}
        params = self.gateway_params(*extra, principal=principal, env=env)
        with log.open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode=mode, cache=None) as client:
                yield client

    def executions(self, tool: str) -> list[dict[str, Any]]:
        return executions(self.ledger, tool)

    def ledger_lines(self) -> list[dict[str, Any]]:
        return read_ledger(self.ledger)

    async def record_count(self) -> int:
        """Records plus audit events in the store: what a call left behind."""
        from sqlalchemy import create_engine, text

        def count() -> int:
            engine = create_engine(self.store)
            try:
                with engine.connect() as conn:
                    records = conn.execute(text("SELECT count(*) FROM idempotency_records")).scalar_one()
                    events = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
                    return int(records) + int(events)
            finally:
                engine.dispose()

        return await anyio.to_thread.run_sync(count)


def text_of(result: Any) -> str:
    """The text of a result's first content block, which must be text."""
    block = result.content[0]
    assert isinstance(block, TextContent), block
    return block.text


def resource_text(result: ReadResourceResult, index: int = 0) -> str:
    """The text of a read resource's ``index``-th contents, which must be text (not a blob)."""
    contents = result.contents[index]
    assert isinstance(contents, TextResourceContents), contents
    return contents.text


def request_meta(values: Mapping[str, Any]) -> RequestParamsMeta:
    """``_meta`` for ``Client.call_tool`` (an open map the type checker sees as a TypedDict)."""
    return cast(RequestParamsMeta, dict(values))


def meta_of(result: Any) -> dict[str, Any]:
    return dict(result.meta or {})


def outcome(result: Any) -> str | None:
    return meta_of(result).get(meta.OUTCOME)


def error_code(result: Any) -> str | None:
    err = meta_of(result).get(meta.ERROR)
    return err.get("code") if isinstance(err, dict) else None
