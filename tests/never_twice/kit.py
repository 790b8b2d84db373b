"""Test kit for the "never twice" suite: a gateway whose pid and log are known, a raw stdio
client, a direct look into the store, a SQLite write-lock holder, an HTTP downstream that can
die and come back on its port, a faulty reverse proxy, and a strace reader.

Everything is real: ``python -m gateway serve`` subprocesses, ``examples/payments_server.py``
counting its executions in its fsynced ledger, a SQLite file or a PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.support import EXAMPLE_SERVER, REPO, Setup, alive, toml_value, wait_for

WAIT = 30.0
HERE = Path(__file__).resolve().parent
PROXY_SCRIPT = HERE / "fault_proxy.py"

# Writes its own pid, then becomes the gateway (exec keeps the pid), so a test can signal it.
_LAUNCH = (
    "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway', *sys.argv[2:]])"
)


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def sqlite_path(store: str) -> Path:
    return Path(store.removeprefix("sqlite:///"))


# ---- a gateway process with a known pid and log ------------------------------------------------


@dataclass
class Running:
    """A gateway subprocess over stdio: its client, its pid, its stderr (the log)."""

    client: Client
    pid: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def serve_argv(setup: Setup, *extra: str, principal: str = "local") -> list[str]:
    return [
        "serve",
        "--manifests",
        str(setup.manifests),
        "--store",
        setup.store,
        "--principal",
        principal,
        *extra,
    ]


@asynccontextmanager
async def gateway(
    setup: Setup,
    *extra: str,
    name: str = "gateway",
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
    principal: str = "local",
) -> AsyncIterator[Running]:
    """``python -m gateway serve`` over stdio (optionally under ``wrap``, e.g. strace or faketime)."""
    pidfile = setup.tmp / f"{name}.pid"
    pidfile.unlink(missing_ok=True)
    log = setup.tmp / f"{name}.log"
    argv = [
        *wrap,
        sys.executable,
        "-c",
        _LAUNCH,
        str(pidfile),
        *serve_argv(setup, *extra, principal=principal),
    ]
    params = StdioServerParameters(
        command=argv[0], args=argv[1:], env={**os.environ, **(env or {})}, cwd=str(setup.tmp)
    )
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="auto", cache=None) as client:
            yield Running(client, int(pidfile.read_text()), log)


def children(pid: int) -> list[int]:
    """Running (not zombie) direct children of a process (every thread's), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return [child for child in found if alive(child)]


# ---- the store, looked at directly ---------------------------------------------------------------


def _engine(store: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(store)


def _sql(store: str, statement: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    from sqlalchemy import text

    engine = _engine(store)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), dict(params or {}))
            return [dict(row._mapping) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


async def sql(store: str, statement: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    return await anyio.to_thread.run_sync(_sql, store, statement, params)


async def record(store: str, key: str, principal: str = "local") -> dict[str, Any] | None:
    rows = await sql(
        store,
        "SELECT * FROM idempotency_records WHERE principal = :p AND key = :k",
        {"p": principal, "k": key},
    )
    return rows[0] if rows else None


async def events(store: str, key: str | None = None) -> list[dict[str, Any]]:
    """Audit events, oldest first; ``detail`` decoded."""
    where, params = ("WHERE key = :k", {"k": key}) if key is not None else ("", {})
    rows = await sql(store, f"SELECT * FROM audit_events {where} ORDER BY at, id", params)
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if row.get("detail") else {}
    return rows


async def wait_record(
    store: str, key: str, predicate: Any, *, timeout: float = WAIT
) -> dict[str, Any] | None:
    """Poll the store until ``predicate(record)`` holds (bounded); the last record read."""
    last: list[dict[str, Any] | None] = [None]
    with anyio.move_on_after(timeout):
        while True:
            last[0] = await record(store, key)
            if predicate(last[0]):
                break
            await anyio.sleep(0.05)
    return last[0]


# ---- a stalled SQLite store ----------------------------------------------------------------------


@dataclass
class WriteLock:
    """Another process's view: a connection that holds SQLite's write lock until released."""

    path: Path
    _release: threading.Event = field(default_factory=threading.Event)
    _held: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: list[BaseException] = field(default_factory=list)

    def _hold(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=WAIT, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE")
                self._held.set()
                self._release.wait(120)
                db.execute("ROLLBACK")
            finally:
                db.close()
        except BaseException as exc:
            self._error.append(exc)
            self._held.set()

    async def acquire(self) -> None:
        self._thread = threading.Thread(target=self._hold, daemon=True)
        self._thread.start()
        await wait_for(self._held.is_set, timeout=WAIT)
        if self._error:
            raise self._error[0]

    async def release(self) -> None:
        self._release.set()
        if self._thread is not None:
            await anyio.to_thread.run_sync(self._thread.join, WAIT)


# ---- a raw stdio client (sends what the SDK's client cannot: NaN, Infinity) ---------------------


class RawGateway:
    """Line-delimited JSON-RPC over the gateway's stdin/stdout, by hand."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._buffer = b""
        self._next_id = 100

    async def send_line(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")

    async def _read_message(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    async def request_raw(self, method: str, params_json: str) -> dict[str, Any]:
        """Send a request whose params are given as JSON text (it may hold NaN); its response."""
        self._next_id += 1
        ident = self._next_id
        await self.send_line(f'{{"jsonrpc":"2.0","id":{ident},"method":"{method}","params":{params_json}}}')
        with anyio.fail_after(WAIT):
            while True:
                message = await self._read_message()
                if message.get("id") == ident:
                    return message

    async def call_tool_raw(self, name: str, arguments_json: str) -> dict[str, Any]:
        return await self.request_raw("tools/call", f'{{"name":"{name}","arguments":{arguments_json}}}')

    async def initialize(self) -> None:
        response = await self.request_raw(
            "initialize",
            json.dumps(
                {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"},
                }
            ),
        )
        assert "result" in response, response
        await self.send_line('{"jsonrpc":"2.0","method":"notifications/initialized"}')


@asynccontextmanager
async def raw_gateway(setup: Setup, *extra: str) -> AsyncIterator[RawGateway]:
    log = setup.tmp / "raw-gateway.log"
    with log.open("wb") as errlog:
        process = await anyio.open_process(
            [sys.executable, "-m", "gateway", *serve_argv(setup, *extra)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
            cwd=setup.tmp,
        )
        try:
            raw = RawGateway(process)
            await raw.initialize()
            yield raw
        finally:
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(WAIT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


# ---- HTTP: a downstream that can die and come back, and a faulty proxy in front of it -------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepting(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


STOP_GRACE = 3.0  # uvicorn's graceful shutdown waits for every open stream (a gateway's listen
# stream stays open as long as the gateway lives): past this, the server is killed. Its ledger
# lines are fsynced as they are written, so nothing a test reads is lost.


async def _stop(process: Process) -> None:
    if process.returncode is None:
        process.terminate()
    with anyio.move_on_after(STOP_GRACE):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@asynccontextmanager
async def http_downstream(setup: Setup, port: int, *, name: str = "downstream") -> AsyncIterator[Process]:
    """``examples/payments_server.py --http PORT`` writing the setup's ledger; up once it accepts."""
    env = {**os.environ, "PAYMENTS_LEDGER": str(setup.ledger)}
    with (setup.tmp / f"{name}.log").open("ab") as errlog:
        process = await anyio.open_process(
            [sys.executable, str(EXAMPLE_SERVER), "--http", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            env=env,
        )
        try:
            await wait_for(lambda: accepting(port) or process.returncode is not None, timeout=WAIT)
            assert process.returncode is None, (setup.tmp / f"{name}.log").read_text()
            yield process
        finally:
            await _stop(process)


@asynccontextmanager
async def fault_proxy(
    setup: Setup, upstream_port: int, *, tool: str, answer: int, refuse_until: Path | None = None
) -> AsyncIterator[str]:
    """``fault_proxy.py`` on a free port in front of ``upstream_port``; yields the MCP URL.

    Its log (``proxy.jsonl``) has one line per ``tools/call`` of ``tool`` it intercepted.
    """
    port = free_port()
    argv = [
        sys.executable,
        str(PROXY_SCRIPT),
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{upstream_port}",
        "--tool",
        tool,
        "--answer",
        str(answer),
        "--log",
        str(setup.tmp / "proxy.jsonl"),
    ]
    if refuse_until is not None:
        argv += ["--refuse-until", str(refuse_until)]
    with (setup.tmp / "proxy.log").open("ab") as errlog:
        process = await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=errlog, cwd=REPO)
        try:
            await wait_for(lambda: accepting(port) or process.returncode is not None, timeout=WAIT)
            assert process.returncode is None, (setup.tmp / "proxy.log").read_text()
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            await _stop(process)


def proxy_log(setup: Setup) -> list[dict[str, Any]]:
    path = setup.tmp / "proxy.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


# ---- strace ---------------------------------------------------------------------------------------

STRACE_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")
CALL = re.compile(r"^(?P<name>\w+)\((?P<fd>\d+)<(?P<path>[^>]*)>")
RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>")


@dataclass(frozen=True)
class Syscall:
    """One system call of a traced process: where it started and where it returned in the trace."""

    index: int  # line of its start
    done: int  # line of its return (== index unless it was interrupted by another thread's line)
    pid: int
    name: str
    fd: int
    path: str
    text: str  # the whole start line (strings as strace printed them)


def parse_strace(trace: str) -> list[Syscall]:
    """``strace -f -y -o FILE`` lines to calls, joining ``<unfinished ...>`` with ``resumed``."""
    calls: list[Syscall] = []
    pending: dict[tuple[int, str], tuple[int, str, int, str, str]] = {}
    for index, line in enumerate(trace.splitlines()):
        m = STRACE_LINE.match(line)
        if m is None:
            continue
        pid, rest = int(m["pid"]), m["rest"]
        resumed = RESUMED.match(rest)
        if resumed is not None:
            start = pending.pop((pid, resumed["name"]), None)
            if start is not None:
                first, name, fd, path, text = start
                calls.append(Syscall(first, index, pid, name, fd, path, text))
            continue
        call = CALL.match(rest)
        if call is None:
            continue
        name, fd, path = call["name"], int(call["fd"]), call["path"]
        if rest.endswith("<unfinished ...>"):
            pending[(pid, name)] = (index, name, fd, path, rest)
        else:
            calls.append(Syscall(index, index, pid, name, fd, path, rest))
    return sorted(calls, key=lambda c: c.index)


def pipes_of(pid: int) -> set[str]:
    """Every ``pipe:[N]`` a process holds open (a stdio server may keep its stdin on a private fd)."""
    found: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("pipe:"):
            found.add(target)
    return found


def ledger_labels(ledger: Path) -> dict[str, int]:
    """Executions per ``label`` argument in the ledger ("finished" lines are not executions)."""
    counts: dict[str, int] = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("phase") == "finished":
                continue
            label = entry.get("args", {}).get("label")
            if label is not None:
                counts[label] = counts.get(label, 0) + 1
    return counts


# ---- a downstream started through a launcher (it can leave a marker, or hang before exec) ---------


def launcher_manifest(
    setup: Setup, *, marker: Path, block: Path, gate: Path, hold_stdout: Path | None = None, **kwargs: Any
) -> Path:
    """The example server's manifest, started through ``launcher.py`` (see there)."""
    path = setup.manifest(**kwargs)
    args = [str(HERE / "launcher.py"), str(marker), str(block), str(gate), str(EXAMPLE_SERVER)]
    env = {"PAYMENTS_LEDGER": str(setup.ledger)}
    if hold_stdout is not None:
        env["LAUNCHER_HOLD_STDOUT"] = str(hold_stdout)
    replaced = {"args = ": f"args = {toml_value(args)}", "env = ": f"env = {toml_value(env)}"}
    lines = [
        next((new for prefix, new in replaced.items() if line.startswith(prefix)), line)
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def starts(marker: Path) -> int:
    """How many times the launcher started."""
    return len(marker.read_text().split()) if marker.exists() else 0
