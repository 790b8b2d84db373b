"""Two (or more) checkouts of the gateway against each other, interleaved: what one change buys.

    python bench/ab.py before=/path/to/old/checkout after=. [--legs pass,first,replay]
                       [--rounds 10] [--calls 200] [--warmup 100] [--mode auto|legacy|REVISION]

Every variant is a stdio gateway (``serve --transport stdio``, SQLite, or with ``--pg`` a fresh
PostgreSQL database each) started from its own
checkout (``PYTHONPATH``), each with its own downstream (``bench/downstream.py`` of *this*
checkout). Round by round, in a shuffled order, each variant makes ``--calls`` sequential calls
of each leg. Per variant and leg: p50 wall ms per call, and the CPU ms per call of the gateway
process (all its threads, from ``/proc``; the median of the rounds, with their range) and of its
downstream, each also as a ratio to the first variant. Nothing is asserted; the CPU figure is the
one that says how much work a change saved (it barely moves with the machine's load), the wall
figure how much a user sees.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kit import (
    REPO,
    children_matching,
    cpu_seconds,
    gateway_argv,
    isolate,
    logged,
    new_key,
    quiet_env,
    write_manifest,
)

LEGS = ("pass", "first", "replay")


async def call(client: Client, leg: str, key: str) -> None:
    if leg == "pass":
        result = await client.call_tool("noop_ro", {"x": 1})
    elif leg == "first":
        result = await client.call_tool("append", {"x": 1, "idempotency_key": new_key()})
    else:
        result = await client.call_tool("append", {"x": 1, "idempotency_key": key})
    if result.is_error:
        raise RuntimeError(f"{leg}: {result}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", help="name=checkout")
    parser.add_argument("--legs", default=",".join(LEGS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg", action="store_true", help="each variant on a fresh PostgreSQL database")
    args = parser.parse_args()
    variants = {v.split("=", 1)[0]: Path(v.split("=", 1)[1]).resolve() for v in args.variants}
    legs = [leg for leg in args.legs.split(",") if leg]
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="idem-ab-"))
    isolate(work)
    print(f"work directory: {work}; load average {os.getloadavg()[0]:.2f}", flush=True)
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    down: dict[tuple[str, str], list[float]] = {}
    async with AsyncExitStack() as stack:
        clients: dict[str, tuple[Client, int, int, str]] = {}
        for name, root in variants.items():
            folder = work / name
            manifests = write_manifest(folder / "manifests", ledger=folder / "ledger.jsonl")
            store = f"sqlite:///{folder / 'store.db'}"
            if args.pg:
                import pgcluster

                store, _notes = stack.enter_context(pgcluster.database())
            argv = gateway_argv(manifests, store)
            env = quiet_env(PYTHONPATH=str(root))
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(root))
            client = await stack.enter_async_context(
                Client(logged(params, folder / "gateway.log"), mode=args.mode, cache=None)
            )
            (gateway_pid,) = children_matching(str(manifests))
            downstream = [
                p for p in children_matching(str(REPO / "bench" / "downstream.py")) if p != gateway_pid
            ]
            known = {c[2] for c in clients.values()}
            (downstream_pid,) = [p for p in downstream if p not in known]
            replay_key = new_key()
            await call(client, "first", replay_key)
            await client.call_tool("append", {"x": 1, "idempotency_key": replay_key})
            for leg in legs:
                for _ in range(args.warmup):
                    await call(client, leg, replay_key)
            clients[name] = (client, gateway_pid, downstream_pid, replay_key)
        for rnd in range(args.rounds):
            order = [(name, leg) for name in variants for leg in legs]
            rng.shuffle(order)
            for name, leg in order:
                client, gpid, dpid, replay_key = clients[name]
                g0, d0 = cpu_seconds(gpid), cpu_seconds(dpid)
                samples = []
                for _ in range(args.calls):
                    started = time.perf_counter()
                    await call(client, leg, replay_key)
                    samples.append((time.perf_counter() - started) * 1000)
                g1, d1 = cpu_seconds(gpid), cpu_seconds(dpid)
                wall.setdefault((name, leg), []).extend(samples)
                cpu.setdefault((name, leg), []).append((g1 - g0) * 1000 / args.calls)
                down.setdefault((name, leg), []).append((d1 - d0) * 1000 / args.calls)
            print(f"round {rnd + 1}/{args.rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
    base = next(iter(variants))
    print(
        f"\n{'leg':8} {'variant':10} {'p50 ms':>8} {'mean ms':>8} {'gw CPU ms':>10} {'(min-max)':>13}"
        f" {'down CPU ms':>11} {'p50 ratio':>9} {'CPU ratio':>9}"
    )
    for leg in legs:
        for name in variants:
            w = wall[(name, leg)]
            rounds = cpu[(name, leg)]
            c = statistics.median(rounds)
            d = statistics.median(down[(name, leg)])
            p50, mean = statistics.median(w), statistics.fmean(w)
            p50_ratio = p50 / statistics.median(wall[(base, leg)])
            cpu_ratio = c / statistics.median(cpu[(base, leg)])
            spread = f"{min(rounds):.2f}-{max(rounds):.2f}"
            print(
                f"{leg:8} {name:10} {p50:8.3f} {mean:8.3f} {c:10.3f} {spread:>13} {d:11.3f}"
                f" {p50_ratio:9.2f} {cpu_ratio:9.2f}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    anyio.run(main)
