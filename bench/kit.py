"""Shared pieces of the benchmark parts: legs, the timing loops, processes, manifests, targets.

Every figure comes from a real ``mcp.Client`` (``cache=None``) talking to a real process. Legs
of one part are interleaved (sequential latency: round by round in a shuffled order; throughput:
in rounds, shuffled), so a noisy neighbour slows every leg alike instead of whichever ran then.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOWNSTREAM = BENCH / "downstream.py"
FASTMCP_PROXY = BENCH / "fastmcp_proxy.py"
SDK_PROXY = BENCH / "sdk_proxy.py"
FASTMCP_PYTHON = BENCH / ".venv-fastmcp" / "bin" / "python"
PLOT_PYTHON = BENCH / ".venv-plot" / "bin" / "python"
OUTCOME_META = "idem-gateway/outcome"
WAIT = 60.0  # seconds: the bound of every start-up wait

Call = Callable[[int], Awaitable[Any]]


def new_key() -> str:
    return f"bench-{uuid.uuid4().hex}"


def outcome_of(result: Any) -> str | None:
    value = (result.meta or {}).get(OUTCOME_META)
    return value if isinstance(value, str) else None


# ---- legs and timing ---------------------------------------------------------------------------


@dataclass
class Leg:
    """One thing to time: ``call(i)`` makes the i-th call; ``expect`` is the outcome it must have."""

    name: str
    call: Call
    expect: str | None = None
    client: Client | None = None
    samples: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str | None = None

    async def once(self, i: int) -> float:
        started = time.perf_counter()
        try:
            result = await self.call(i)
        except Exception as exc:  # a failed call is counted, never timed as fast
            self._fail(f"{type(exc).__name__}: {exc}")
            return (time.perf_counter() - started) * 1000
        elapsed = (time.perf_counter() - started) * 1000
        if result.is_error or (self.expect is not None and outcome_of(result) != self.expect):
            self._fail(f"is_error={result.is_error} outcome={outcome_of(result)} {str(result)[:300]}")
        return elapsed

    def _fail(self, why: str) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = why


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, min(len(sorted_ms), round(q / 100 * len(sorted_ms) + 0.5)))
    return sorted_ms[rank - 1]


def summarise(samples: Sequence[float]) -> dict[str, Any]:
    ms = sorted(samples)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "min_ms": round(ms[0], 3),
    }


async def sequential(legs: Sequence[Leg], *, n: int, warmup: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``warmup + n`` rounds; each round calls every leg once, in a shuffled order."""
    rng = random.Random(seed)
    for leg in legs:
        leg.samples.clear()
    for rnd in range(warmup + n):
        order = list(legs)
        rng.shuffle(order)
        for leg in order:
            elapsed = await leg.once(rnd)
            if rnd >= warmup:
                leg.samples.append(elapsed)
    out = {}
    for leg in legs:
        out[leg.name] = {**summarise(leg.samples), "failures": leg.failures}
        if leg.first_failure:
            out[leg.name]["first_failure"] = leg.first_failure
        if leg.client is not None:
            out[leg.name]["protocol_version"] = leg.client.protocol_version
    return out


async def _burst(leg: Leg, calls: int, inflight: int, offset: int, sink: list[float]) -> float:
    """``calls`` calls with ``inflight`` of them outstanding at any moment; the elapsed seconds."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < calls:
            i = next_index
            next_index += 1
            sink.append(await leg.once(offset + i))

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(inflight):
            tg.start_soon(worker)
    return time.perf_counter() - started


async def throughput(
    legs: Sequence[Leg], *, inflights: Sequence[int], calls: int, rounds: int = 2, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per leg and in-flight level: calls/s, p50, p99, over ``calls`` calls split into ``rounds``."""
    rng = random.Random(seed)
    out: dict[str, dict[str, dict[str, Any]]] = {leg.name: {} for leg in legs}
    for inflight in inflights:
        total = max(calls, 4 * inflight)
        per_round = max(inflight, total // rounds)
        samples: dict[str, list[float]] = {leg.name: [] for leg in legs}
        elapsed: dict[str, float] = {leg.name: 0.0 for leg in legs}
        failures_before = {leg.name: leg.failures for leg in legs}
        for rnd in range(rounds):
            order = list(legs)
            rng.shuffle(order)
            for leg in order:
                offset = 1_000_000 * (inflight + 1) + rnd * per_round
                elapsed[leg.name] += await _burst(leg, per_round, inflight, offset, samples[leg.name])
        for leg in legs:
            n = len(samples[leg.name])
            out[leg.name][str(inflight)] = {
                "calls": n,
                "calls_per_s": round(n / elapsed[leg.name], 1) if elapsed[leg.name] else None,
                **{k: v for k, v in summarise(samples[leg.name]).items() if k in ("p50_ms", "p99_ms")},
                "failures": leg.failures - failures_before[leg.name],
            }
    return out


# ---- targets -----------------------------------------------------------------------------------


def target(name: str, value: float | None, op: str, limit: float, how: str) -> dict[str, Any]:
    """One ratio with its verdict; ``op`` is ``<=`` or ``>=``."""
    if value is None or value != value:  # missing or NaN
        return {"target": name, "value": None, "op": op, "limit": limit, "pass": False, "how": how}
    ok = value <= limit if op == "<=" else value >= limit
    return {"target": name, "value": round(value, 3), "op": op, "limit": limit, "pass": ok, "how": how}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# ---- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolate(work: Path) -> None:
    """Keep every gateway of this run off the user's own state (secret, default store).

    The user's ``IDEM_GATEWAY_*`` settings (a store, tokens, encryption keys) are dropped, so the
    figures do not depend on them; the state directory, and with it the fingerprint secret that
    every gateway on one store shares, is the run's own.
    """
    for name in [n for n in os.environ if n.startswith("IDEM_GATEWAY_")]:
        del os.environ[name]
    state = work / "state"
    state.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_STATE_HOME"] = str(state)
    os.environ["IDEM_GATEWAY_SECRET_FILE"] = str(state / "secret.key")


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: ours, logs at WARNING, plus ``extra``."""
    return {**os.environ, "IDEM_GATEWAY_LOG_LEVEL": "WARNING", "FASTMCP_LOG_LEVEL": "WARNING", **extra}


@asynccontextmanager
async def spawn(argv: Sequence[str], *, log: Path, env: dict[str, str], cwd: Path) -> AsyncIterator[Process]:
    """A child process with stderr to ``log``; SIGTERM (then SIGKILL) when done."""
    with log.open("ab") as errlog:
        process = await anyio.open_process(
            list(argv), stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog, env=env, cwd=cwd
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(10, shield=True):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    with anyio.CancelScope(shield=True):
                        await process.wait()


async def wait_listening(port: int, process: Process, log: Path, path: str | None = None) -> None:
    """Until 127.0.0.1:port accepts (and ``path`` answers 200, if given); bounded."""
    with anyio.fail_after(WAIT):
        async with httpx2.AsyncClient(timeout=5.0) as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{log.name}: exited early:\n{log.read_text()[-3000:]}")
                try:
                    if path is None:
                        stream = await anyio.connect_tcp("127.0.0.1", port)
                        await stream.aclose()
                        return
                    if (await http.get(f"http://127.0.0.1:{port}{path}")).status_code == 200:
                        return
                except (OSError, httpx2.TransportError):
                    pass
                await anyio.sleep(0.05)


def children_matching(marker: str) -> list[int]:
    """Our descendant processes whose command line contains ``marker``."""
    me = os.getpid()
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        cmdlines[int(entry)] = cmd
    found = []
    for pid, cmd in cmdlines.items():
        if marker not in cmd:
            continue
        p = parents.get(pid)
        while p and p != me:
            p = parents.get(p)
        if p == me:
            found.append(pid)
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the downstream, the gateway, FastMCP --------------------------------------------------------


def downstream_stdio(ledger: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=[str(DOWNSTREAM)], env=quiet_env(BENCH_LEDGER=str(ledger))
    )


def sdk_proxy_stdio(ledger: Path) -> StdioServerParameters:
    """``bench/sdk_proxy.py`` in front of the downstream: the least an SDK-based proxy does."""
    return StdioServerParameters(
        command=sys.executable,
        args=[str(SDK_PROXY), sys.executable, str(DOWNSTREAM)],
        env=quiet_env(BENCH_LEDGER=str(ledger)),
    )


def sdk_proxy_http_argv(port: int, backend_url: str) -> list[str]:
    """``bench/sdk_proxy.py`` over streamable HTTP both ways, in front of ``backend_url``."""
    return [sys.executable, str(SDK_PROXY), "--http", str(port), "--backend-url", backend_url]


def downstream_http_argv(port: int) -> list[str]:
    return [sys.executable, str(DOWNSTREAM), "--http", str(port)]


def write_manifest(folder: Path, *, ledger: Path, url: str | None = None) -> Path:
    """A manifests folder with one server, ``bench``: the downstream over stdio, or at ``url``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[server]", 'name = "bench"']
    if url is None:
        lines += [
            'transport = "stdio"',
            f"command = {json.dumps(sys.executable)}",
            f"args = [{json.dumps(str(DOWNSTREAM))}]",
            f"env = {{ BENCH_LEDGER = {json.dumps(str(ledger))} }}",
        ]
    else:
        lines += ['transport = "http"', f"url = {json.dumps(url)}"]
    lines += ['timeout = "30s"', "", "[defaults]", 'side_effects = "auto"', 'retention = "24h"', ""]
    (folder / "bench.toml").write_text("\n".join(lines))
    return folder


def gateway_argv(manifests: Path, store: str, *extra: str, profile_dir: Path | None = None) -> list[str]:
    """``python -m gateway serve`` from this checkout (or through the profiling wrapper)."""
    serve = ["serve", "--manifests", str(manifests), "--store", store, "--principal", "bench", *extra]
    if profile_dir is not None:
        return [sys.executable, str(BENCH / "profiled_gateway.py"), str(profile_dir), *serve]
    return [sys.executable, "-m", "gateway", *serve]


def gateway_stdio(manifests: Path, store: str, *, profile_dir: Path | None = None) -> StdioServerParameters:
    argv = gateway_argv(manifests, store, profile_dir=profile_dir)
    return StdioServerParameters(command=argv[0], args=argv[1:], env=quiet_env(), cwd=str(REPO))


def logged(params: StdioServerParameters, log: Path) -> Any:
    """A stdio transport for ``mcp.Client`` whose child's stderr goes to ``log`` (kept open)."""
    return stdio_client(params, errlog=log.open("a"))


def log_warnings(folder: Path) -> list[str]:
    """One note per log file under ``folder`` with WARNING/ERROR lines: how many, and the first."""
    notes = []
    for log in sorted(folder.rglob("*.log")):
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line
        ]
        if lines:
            notes.append(f"{log.name}: {len(lines)} warning/error lines, e.g. {lines[0][:160]}")
    return notes


def fastmcp_argv(
    *,
    backend_url: str | None = None,
    ledger: Path | None = None,
    http: int | None = None,
    per_request: bool = False,
) -> list[str]:
    argv = [str(FASTMCP_PYTHON), str(FASTMCP_PROXY)]
    if backend_url:
        argv += ["--backend-url", backend_url]
    else:
        argv += ["--backend-stdio", sys.executable, str(DOWNSTREAM), "--ledger", str(ledger)]
    if http is not None:
        argv += ["--http", str(http)]
    if per_request:
        argv.append("--per-request")
    return argv


def require_fastmcp() -> None:
    if not FASTMCP_PYTHON.exists():
        sys.exit(
            f"{FASTMCP_PYTHON} is missing: run bench/setup.sh (see bench/README.md) or pass --no-fastmcp"
        )


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without sticky sessions: each request goes to the next port in turn."""

    def __init__(self, ports: Sequence[int], inner: httpx2.AsyncBaseTransport) -> None:
        self.ports = list(ports)
        self.inner = inner
        self.sent = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.sent % len(self.ports)]
        self.sent += 1
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _limits() -> httpx2.Limits:
    """Enough kept-alive connections for 128 in flight: the client must not be the bottleneck.

    Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes them
    from the server's side: reusing a connection the server is just closing fails the request
    (a ``ReadError`` that the SDK does not retry, rightly, for a POST), and on a loaded machine
    legs idle for more than 5 s while the others run.
    """
    return httpx2.Limits(max_connections=512, max_keepalive_connections=512, keepalive_expiry=2.0)


@asynccontextmanager
async def http_client(url: str, *, mode: str, ports: Sequence[int] | None = None) -> AsyncIterator[Client]:
    """An ``mcp.Client`` over streamable HTTP (round-robin over ``ports`` if given)."""
    timeout = httpx2.Timeout(30.0, read=300.0)
    if ports:
        transport: httpx2.AsyncBaseTransport = RoundRobin(ports, httpx2.AsyncHTTPTransport(limits=_limits()))
        http = httpx2.AsyncClient(timeout=timeout, transport=transport)
    else:
        http = httpx2.AsyncClient(timeout=timeout, limits=_limits())
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:  # type: ignore[arg-type]
        yield client


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machine() -> dict[str, Any]:
    import platform

    load = os.getloadavg()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
    }
