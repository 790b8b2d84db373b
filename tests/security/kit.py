"""Test kit for the security tests: a gateway over raw stdio pipes, and hostile manifests.

``RawGateway`` runs ``python -m gateway serve`` with pipes this test owns and speaks JSON-RPC as
bytes, so a test can send what no SDK client would (an over-long line, a malformed message,
a key full of escape sequences) and read exactly what comes back. Every read is bounded.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import stdio_client

from tests.support import Setup, toml_value

HOSTILE_SERVER = Path(__file__).resolve().parent / "hostile_server.py"
WAIT = 30.0
LEGACY = "2025-11-25"


class RawGateway:
    """A gateway subprocess over stdio, spoken to line by line."""

    def __init__(
        self, setup: Setup, *extra: str, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.log = log or setup.tmp / "raw-gateway.log"
        argv = [
            sys.executable, "-m", "gateway", "serve", "--manifests", str(setup.manifests),
            "--store", setup.store, *extra,
        ]  # fmt: skip
        self._errlog = self.log.open("wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errlog,
            cwd=setup.tmp,
            env={**os.environ, **(env or {})},
        )
        self._buffer = b""
        self._next_id = 1000

    # ---- bytes -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send_json(self, message: Any) -> None:
        self.send(json.dumps(message).encode() + b"\n")

    def read_line(self, timeout: float = WAIT) -> bytes:
        """The next line the gateway writes to stdout (bounded)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line from the gateway within {timeout}s; log:\n{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise EOFError(f"the gateway closed stdout; log:\n{self.tail()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def read_message(self, timeout: float = WAIT) -> dict[str, Any]:
        message = json.loads(self.read_line(timeout))
        assert isinstance(message, dict), message
        return message

    def reply_to(self, request_id: Any, timeout: float = WAIT) -> dict[str, Any]:
        """The response (or error) for ``request_id``, skipping notifications."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.read_message(max(0.01, deadline - time.monotonic()))
            if "method" not in message and message.get("id") == request_id:
                return message

    # ---- JSON-RPC ----------------------------------------------------------------------------

    def request(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = WAIT
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send_json(message)
        return self.reply_to(self._next_id, timeout)

    def handshake(self) -> dict[str, Any]:
        reply = self.request(
            "initialize",
            {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        )
        assert "result" in reply, reply
        self.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply

    def call_tool(self, name: str, arguments: Any, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        return self.request("tools/call", params)

    def alive(self) -> bool:
        """Still running and still answering."""
        return self.process.poll() is None and "result" in self.request("ping", timeout=WAIT)

    # ---- life --------------------------------------------------------------------------------

    def tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def close(self) -> int:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(WAIT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._errlog.close()
        return int(self.process.returncode)

    def __enter__(self) -> RawGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Ran:
    """``python -m gateway ARGS`` in a subprocess, bounded; ``env`` is added to this one's."""
    with anyio.fail_after(WAIT * 2):
        done = await anyio.run_process(
            [sys.executable, "-m", "gateway", *args],
            check=False,
            env={**os.environ, **(env or {})},
            cwd=str(cwd) if cwd else None,
        )
    return Ran(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


@asynccontextmanager
async def logged_gateway(
    setup: Setup, log: Path, *extra: str, env: dict[str, str] | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """A real MCP client over stdio to a gateway whose stderr (its log) goes to ``log``."""
    params = setup.gateway_params(*extra, env=env)
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, cache=None) as client:
            yield client


def hostile_manifest(setup: Setup, *, name: str = "hostile", **server: Any) -> Path:
    """A manifest for ``hostile_server.py``; its ledger is ``setup.tmp / "hostile.jsonl"``."""
    setup.manifests.mkdir(parents=True, exist_ok=True)
    env = {"HOSTILE_LEDGER": str(hostile_ledger(setup)), **server.pop("env", {})}
    lines = [
        "[server]",
        f"name = {toml_value(name)}",
        f"command = {toml_value(sys.executable)}",
        f"args = {toml_value([str(HOSTILE_SERVER)])}",
        f"env = {toml_value(env)}",
        *(f"{k} = {toml_value(v)}" for k, v in server.items()),
    ]
    path = setup.manifests / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def hostile_ledger(setup: Setup) -> Path:
    return setup.tmp / "hostile.jsonl"


def hostile_executions(setup: Setup) -> int:
    path = hostile_ledger(setup)
    return len(path.read_text().splitlines()) if path.exists() else 0


def error_code_of(reply: dict[str, Any]) -> str | None:
    """The gateway's refusal code in a tools/call reply, if it is a refusal."""
    meta = (reply.get("result") or {}).get("_meta") or {}
    error = meta.get("idem-gateway/error")
    return error.get("code") if isinstance(error, dict) else None
