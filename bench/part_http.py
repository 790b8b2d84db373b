"""Streamable HTTP: a direct call against the gateway over HTTP, at 8, 32 and 128 in flight.

The downstream (``bench/downstream.py --http``) serves streamable HTTP; the gateway
(``serve --transport http``, SQLite) reaches it over HTTP, and so does FastMCP's HTTP proxy
(one reused backend client), shown for reference. Legs, each over its own kept-alive connection
pool (512 connections, so the client is never the bottleneck):
  direct_ro / direct_se     the downstream itself, ``noop_ro`` / ``append``
  fastmcp                   FastMCP's HTTP proxy, ``noop_ro``
  sdk_proxy                 ``bench/sdk_proxy.py --http``: the least a proxy on the MCP SDK does
  gw_pass / gw_first / gw_replay   the gateway, as in the stdio part

Then the replica leg: three ``serve --transport http --stateless`` gateways on one PostgreSQL
database, all in front of the same downstream, behind a round-robin client (no sticky sessions).
Every action (a fresh key) is sent twice at once, so the two copies usually land on two
replicas; the downstream's ledger then shows how many actions ran more than once (must be 0).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

import pgcluster
from kit import (
    Leg,
    cpu_seconds,
    downstream_http_argv,
    fastmcp_argv,
    free_port,
    gateway_argv,
    http_client,
    new_key,
    outcome_of,
    percentile,
    quiet_env,
    ratio,
    read_ledger,
    require_fastmcp,
    sdk_proxy_http_argv,
    sequential,
    spawn,
    target,
    throughput,
    wait_listening,
    write_manifest,
)
from part_stdio import first_execution, gateway_legs

REPLICAS = 3
REPLICA_BASE_X = 50_000_000  # x values of the replica leg's actions, apart from every other leg's


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"notes": [], "tables": {}}
    ledger = work / "ledger.jsonl"
    async with AsyncExitStack() as stack:
        port = free_port()
        log = work / "downstream.log"
        down = await stack.enter_async_context(
            spawn(downstream_http_argv(port), log=log, env=quiet_env(BENCH_LEDGER=str(ledger)), cwd=work)
        )
        await wait_listening(port, down, log)
        down_url = f"http://127.0.0.1:{port}/mcp"
        manifests = write_manifest(work / "manifests", ledger=ledger, url=down_url)

        gw_port = free_port()
        gw_log = work / "gateway.log"
        store = f"sqlite:///{work / 'store' / 'gateway.db'}"
        gw_proc = await stack.enter_async_context(
            spawn(
                gateway_argv(manifests, store, "--transport", "http", "--port", str(gw_port)),
                log=gw_log,
                env=quiet_env(),
                cwd=work,
            )
        )
        await wait_listening(gw_port, gw_proc, gw_log, "/healthz")

        direct = await stack.enter_async_context(http_client(down_url, mode=args.mode))
        gw = await stack.enter_async_context(http_client(f"http://127.0.0.1:{gw_port}/mcp", mode=args.mode))
        legs = [
            Leg("direct_ro", lambda i: direct.call_tool("noop_ro", {"x": i}), client=direct),
            Leg("direct_se", lambda i: direct.call_tool("append", {"x": i}), client=direct),
        ]
        if not args.no_fastmcp:
            require_fastmcp()
            fm_port = free_port()
            fm_log = work / "fastmcp.log"
            fm_proc = await stack.enter_async_context(
                spawn(fastmcp_argv(backend_url=down_url, http=fm_port), log=fm_log, env=quiet_env(), cwd=work)
            )
            await wait_listening(fm_port, fm_proc, fm_log)
            fm = await stack.enter_async_context(
                http_client(f"http://127.0.0.1:{fm_port}/mcp", mode=args.mode)
            )
            legs.append(Leg("fastmcp", lambda i: fm.call_tool("noop_ro", {"x": i}), client=fm))
        sp_port = free_port()
        sp_log = work / "sdk_proxy.log"
        sp_proc = await stack.enter_async_context(
            spawn(sdk_proxy_http_argv(sp_port, down_url), log=sp_log, env=quiet_env(), cwd=work)
        )
        await wait_listening(sp_port, sp_proc, sp_log)
        sp = await stack.enter_async_context(http_client(f"http://127.0.0.1:{sp_port}/mcp", mode=args.mode))
        legs.append(Leg("sdk_proxy", lambda i: sp.call_tool("noop_ro", {"x": i}), client=sp))
        replay_key = new_key()
        await first_execution(gw, replay_key)
        legs += gateway_legs(gw, replay_key)

        seq = await sequential(legs, n=max(30, args.n // 3), warmup=args.warmup, seed=args.seed)
        pids = {"gateway": gw_proc.pid, "downstream": down.pid, "sdk_proxy": sp_proc.pid}
        if not args.no_fastmcp:
            pids["fastmcp"] = fm_proc.pid
        cpu = await _cpu_per_call(legs, pids)
        thr = await throughput(legs, inflights=args.http_inflight, calls=args.calls, seed=args.seed)
    out["sequential"] = seq
    out["throughput"] = thr
    out["cpu_ms_per_call"] = cpu
    ceilings = cpu_ceilings(cpu)
    out["cpu_ceiling"] = ceilings
    out["tables"]["CPU ms per call (sequential, 200 calls per leg; ceiling: see bench/README.md)"] = [
        f"{leg:<12} "
        + "  ".join(f"{proc} {ms:.2f}" for proc, ms in v.items())
        + (f"   all {sum(v.values()):.2f}, ceiling {ceilings[leg]:.2f}x" if leg in ceilings else "")
        for leg, v in cpu.items()
    ]
    out["targets"] = _targets(thr, args.http_inflight)

    if not args.no_replicas:
        try:
            replicas = await _replicas(args, work)
        except RuntimeError as exc:
            out["notes"].append(f"replica leg not run: {exc}")
        else:
            out["replicas"] = replicas
            out["notes"] += replicas.pop("notes")
            out["tables"]["three --stateless replicas on one PostgreSQL, round-robin"] = [
                f"{replicas['actions']} actions x 2 copies at {replicas['inflight']} in flight: "
                f"{replicas['calls_per_s']} calls/s, "
                f"p50 {replicas['p50_ms']} ms, p99 {replicas['p99_ms']} ms",
                f"outcomes {replicas['outcomes']}; executions in the ledger {replicas['executions']}, "
                f"duplicates {replicas['duplicates']}, actions that never ran {replicas['missing']}",
            ]
            out["targets"].append(
                target(
                    "replicas: duplicate executions in the downstream's ledger = 0",
                    float(replicas["duplicates"]),
                    "<=",
                    0,
                    "ledger lines per action - 1, summed",
                )
            )
    return out


async def _cpu_per_call(
    legs: list[Leg], pids: dict[str, int], calls: int = 200
) -> dict[str, dict[str, float]]:
    """CPU milliseconds each process spends per call of a leg (sequential calls, one leg at a time)."""
    out: dict[str, dict[str, float]] = {}
    for leg in legs:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = time.process_time()  # this process runs only the clients, one leg at a time
        for i in range(calls):
            await leg.once(2_000_000 + i)
        client_ms = (time.process_time() - client_before) * 1000 / calls
        out[leg.name] = {"client": round(client_ms, 3)} | {
            name: round((cpu_seconds(pid) - before[name]) * 1000 / calls, 3) for name, pid in pids.items()
        }
    return out


# The throughput legs against the direct leg each is compared with, and the target's limit.
THROUGHPUT_TARGETS = (
    ("gw_pass", "direct_ro", 0.6, "pass-through"),
    ("gw_first", "direct_se", 0.5, "first execution"),
    ("gw_replay", "direct_se", 1.0, "replay"),
)


def cpu_ceilings(cpu: dict[str, dict[str, float]]) -> dict[str, float]:
    """The throughput ratio a leg can reach when the cores are the limit, as they are here.

    Client, gateway and downstream share the machine's cores, so at full load a call costs the
    CPU all of them spend on it: a direct call the client's and the server's, a call through the
    gateway those plus the gateway's. The ratio of throughputs cannot exceed the inverse ratio of
    those sums, however the gateway spends its share.
    """
    out = {}
    for leg, base in (("sdk_proxy", "direct_ro"), *((leg, base) for leg, base, _, _ in THROUGHPUT_TARGETS)):
        if leg in cpu and base in cpu:
            out[leg] = round(sum(cpu[base].values()) / sum(cpu[leg].values()), 3)
    return out


def _targets(thr: dict[str, Any], inflights: list[int]) -> list[dict[str, Any]]:
    def at(leg: str, level: int, field: str) -> float | None:
        return thr.get(leg, {}).get(str(level), {}).get(field)

    out = []
    if 32 in inflights:
        for leg, base, limit, what in THROUGHPUT_TARGETS:
            out.append(
                target(
                    f"HTTP {what} >= {limit}x direct throughput at 32 in flight",
                    ratio(at(leg, 32, "calls_per_s"), at(base, 32, "calls_per_s")),
                    ">=",
                    limit,
                    f"{leg} / {base} calls/s @32",
                )
            )
    if 128 in inflights:
        for leg, base, what in (
            ("gw_pass", "direct_ro", "pass-through"),
            ("gw_first", "direct_se", "first execution"),
            ("gw_replay", "direct_se", "replay"),
        ):
            out.append(
                target(
                    f"HTTP {what} p99 at 128 in flight <= 2x direct",
                    ratio(at(leg, 128, "p99_ms"), at(base, 128, "p99_ms")),
                    "<=",
                    2.0,
                    f"{leg} / {base} p99 @128",
                )
            )
    return out


async def _replicas(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    actions, inflight = args.replica_actions, 32
    work = work / "replicas"
    work.mkdir()
    ledger = work / "ledger.jsonl"
    with pgcluster.database(fsync=args.pg_fsync) as (pg_url, notes):
        async with AsyncExitStack() as stack:
            port = free_port()
            log = work / "downstream.log"
            down = await stack.enter_async_context(
                spawn(downstream_http_argv(port), log=log, env=quiet_env(BENCH_LEDGER=str(ledger)), cwd=work)
            )
            await wait_listening(port, down, log)
            manifests = write_manifest(work / "manifests", ledger=ledger, url=f"http://127.0.0.1:{port}/mcp")
            ports = []
            for n in range(REPLICAS):
                gw_port, gw_log = free_port(), work / f"replica{n}.log"
                argv = gateway_argv(
                    manifests, pg_url, "--transport", "http", "--port", str(gw_port), "--stateless"
                )
                proc = await stack.enter_async_context(spawn(argv, log=gw_log, env=quiet_env(), cwd=work))
                await wait_listening(gw_port, proc, gw_log, "/healthz")
                ports.append(gw_port)
            client = await stack.enter_async_context(
                http_client(f"http://127.0.0.1:{ports[0]}/mcp", mode=args.mode, ports=ports)
            )
            for i in range(20):  # warm every replica's connections and caches
                await client.call_tool("noop_ro", {"x": i})

            outcomes: Counter[str] = Counter()
            samples: list[float] = []
            next_action = 0

            async def send(x: int, key: str) -> None:
                started = time.perf_counter()
                try:
                    result = await client.call_tool("append", {"x": x, "idempotency_key": key})
                    outcome = "error" if result.is_error else (outcome_of(result) or "none")
                except Exception as exc:
                    outcome = type(exc).__name__
                samples.append((time.perf_counter() - started) * 1000)
                outcomes[outcome] += 1

            async def worker() -> None:
                nonlocal next_action
                while next_action < actions:
                    x = REPLICA_BASE_X + next_action
                    next_action += 1
                    key = new_key()
                    async with anyio.create_task_group() as tg:  # the action and its retry, at once
                        tg.start_soon(send, x, key)
                        tg.start_soon(send, x, key)

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(inflight // 2):
                    tg.start_soon(worker)
            elapsed = time.perf_counter() - started
    ran = Counter(line["x"] for line in read_ledger(ledger) if line["x"] >= REPLICA_BASE_X)
    samples.sort()

    return {
        "replicas": REPLICAS,
        "actions": actions,
        "inflight": inflight,
        "calls": len(samples),
        "calls_per_s": round(len(samples) / elapsed, 1),
        "p50_ms": round(percentile(samples, 50), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "outcomes": dict(outcomes),
        "executions": sum(ran.values()),
        "duplicates": sum(n - 1 for n in ran.values() if n > 1),
        "missing": actions - len(ran),
        "notes": notes,
    }
