"""Audit tests: a real gateway subprocess, the example server, and the CLI as a subprocess."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tests.support import REPO, Setup

CLI_TIMEOUT = 60.0


@pytest.fixture
def sqlite_setup(tmp_path: Path) -> Setup:
    """For tests that read the database file itself."""
    return Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")


async def read_json(client: Client, uri: str) -> Any:
    return json.loads(await read_text(client, uri))


async def read_text(client: Client, uri: str) -> str:
    result = await client.read_resource(uri)
    (content,) = result.contents
    assert content.mime_type == "application/json"
    text = getattr(content, "text", None)
    assert isinstance(text, str)
    return text


@asynccontextmanager
async def logged_client(
    setup: Setup, log: Path, *, level: str = "DEBUG", principal: str = "local", mode: str = "auto"
) -> AsyncIterator[Client]:
    """A client whose gateway's stderr (its logs, at ``level``) goes to ``log``."""
    with log.open("w") as errlog:
        params = setup.gateway_params(principal=principal, env={"IDEM_GATEWAY_LOG_LEVEL": level})
        async with Client(stdio_client(params, errlog=errlog), mode=mode, cache=None) as client:
            yield client


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def cli(*args: str) -> Ran:
    """``python -m gateway ARGS`` in a subprocess, bounded."""
    with anyio.fail_after(CLI_TIMEOUT):
        done = await anyio.run_process([sys.executable, "-m", "gateway", *args], check=False, cwd=str(REPO))
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())
