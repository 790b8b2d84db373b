"""Test kit for REST downstreams: start ``examples/invoices_api.py``, write openapi manifests.

The API runs as its own process on loopback and records every request it gets in a ledger
(fsynced before it answers), so a test counts what really reached it. Waits are bounded and
gated on files the API writes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process

from tests.support import REPO, read_ledger, toml_value, wait_for

API = REPO / "examples" / "invoices_api.py"
DOCUMENT = REPO / "examples" / "invoices_api.yaml"
TOKEN = "inv-token-5f3a9c1e7b2d4086"  # what the API demands; the manifest has ${INVOICES_TOKEN}
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class InvoicesApi:
    """A running (or stopped, to be started again on the same port) ``invoices_api.py``."""

    tmp: Path
    port: int = 0
    process: Process | None = None
    ledger: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = self.tmp / "api-ledger.jsonl"
        self.state = self.tmp / "api-state.json"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        port_file = self.tmp / "api.port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, str(API), "--port", str(self.port), "--ledger", str(self.ledger)]
        argv += ["--state", str(self.state), "--port-file", str(port_file)]
        with (self.tmp / "api.stderr").open("ab") as errlog:
            self.process = await anyio.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=errlog,
                stderr=errlog,
                env={**os.environ, "INVOICES_API_TOKEN": TOKEN},
            )
        await wait_for(port_file.exists, timeout=WAIT)
        self.port = int(port_file.read_text())

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
        with anyio.CancelScope(shield=True), anyio.move_on_after(WAIT):
            await process.wait()
        if process.returncode is None:
            process.kill()

    async def exited(self) -> int:
        """Wait (bounded) for the process to end on its own, e.g. a crash fault; its exit code."""
        assert self.process is not None
        with anyio.fail_after(WAIT):
            code = await self.process.wait()
        self.process = None
        return code

    async def fault(self, operation: str, fault: str, **extra: Any) -> None:
        async with httpx2.AsyncClient(timeout=WAIT) as http:
            response = await http.post(
                f"{self.base_url}/_faults", json={"operation": operation, "fault": fault, **extra}
            )
            assert response.status_code == 200, response.text

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        lines = read_ledger(self.ledger)
        return [line for line in lines if operation is None or line["operation"] == operation]

    def executions(self, operation: str) -> list[dict[str, Any]]:
        return [line for line in self.requests(operation) if line["outcome"] == "executed"]


@asynccontextmanager
async def invoices_api(tmp: Path, *, port: int = 0) -> AsyncIterator[InvoicesApi]:
    api = InvoicesApi(tmp, port)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def write_openapi_manifest(
    folder: Path,
    *,
    base_url: str,
    name: str = "invoices",
    spec: str = str(DOCUMENT),
    headers: Mapping[str, str] | None = None,
    server: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    tools: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """A ``transport = "openapi"`` manifest; the bearer token comes from ``${INVOICES_TOKEN}``."""
    folder.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": "Bearer ${INVOICES_TOKEN}"} if headers is None else headers
    lines = [
        "[server]",
        f"name = {toml_value(name)}",
        'transport = "openapi"',
        f"spec = {toml_value(spec)}",
        f"base_url = {toml_value(base_url)}",
        f"headers = {toml_value(dict(headers))}",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in (server or {}).items()]
    lines += ["", "[defaults]", *(f"{k} = {toml_value(v)}" for k, v in (defaults or {}).items())]
    for tool, table in (tools or {}).items():
        lines += ["", f"[tools.{tool}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


GATEWAY_ENV = {"INVOICES_TOKEN": TOKEN}
