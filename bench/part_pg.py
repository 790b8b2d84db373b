"""PostgreSQL against SQLite: first execution and replay through two stdio gateways, interleaved.

Legs: ``sqlite_first`` / ``pg_first`` (fresh key per call, the fsync tool) and ``sqlite_replay`` /
``pg_replay`` (one key repeated: after its first replay, answered from the gateway's replay
cache); each gateway has its own downstream. ``sqlite_replay_store`` / ``pg_replay_store``: the
same key replayed through a second gateway on the same store with ``--replay-cache 0``, so every
replay reads the store (what a replay costs on a replica that did not store the result). Then
throughput at 32 in flight. Target (issue 15): PostgreSQL <= 1.15x SQLite for each, p50.
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from mcp import Client

import pgcluster
from kit import Leg, gateway_stdio, logged, new_key, ratio, sequential, target, throughput, write_manifest
from part_stdio import first_execution, gateway_legs


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with pgcluster.database(fsync=args.pg_fsync) as (pg_url, notes):
        async with AsyncExitStack() as stack:
            legs: list[Leg] = []
            for name, store in (
                ("sqlite", f"sqlite:///{work / 'store' / 'gateway.db'}"),
                ("pg", pg_url),
            ):
                manifests = write_manifest(work / f"manifests-{name}", ledger=work / f"{name}-ledger.jsonl")
                gw = await stack.enter_async_context(
                    Client(
                        logged(gateway_stdio(manifests, store), work / f"gateway-{name}.log"),
                        mode=args.mode,
                        cache=None,
                    )
                )
                key = new_key()
                await first_execution(gw, key)
                legs += [leg for leg in gateway_legs(gw, key, prefix=name) if not leg.name.endswith("_pass")]
                uncached = gateway_stdio(manifests, store)
                uncached.env = {**(uncached.env or {}), "IDEM_GATEWAY_REPLAY_CACHE": "0"}
                uncached_log = work / f"gateway-{name}-uncached.log"
                reader = await stack.enter_async_context(
                    Client(logged(uncached, uncached_log), mode=args.mode, cache=None)
                )
                legs.append(
                    Leg(
                        f"{name}_replay_store",
                        lambda i, c=reader, k=key: c.call_tool("append", {"x": 0, "idempotency_key": k}),
                        expect="replayed",
                        client=reader,
                    )
                )
            seq = await sequential(legs, n=args.n, warmup=args.warmup, seed=args.seed)
            thr = await throughput(legs, inflights=[32], calls=args.calls, seed=args.seed)

    def p50(leg: str) -> float | None:
        return seq.get(leg, {}).get("p50_ms")

    targets = [
        target(
            "PostgreSQL first execution <= 1.15x SQLite, p50",
            ratio(p50("pg_first"), p50("sqlite_first")),
            "<=",
            1.15,
            "pg_first / sqlite_first",
        ),
        target(
            "PostgreSQL replay <= 1.15x SQLite, p50",
            ratio(p50("pg_replay"), p50("sqlite_replay")),
            "<=",
            1.15,
            "pg_replay / sqlite_replay",
        ),
        target(
            "PostgreSQL replay read from the store <= 1.15x SQLite, p50",
            ratio(p50("pg_replay_store"), p50("sqlite_replay_store")),
            "<=",
            1.15,
            "pg_replay_store / sqlite_replay_store",
        ),
    ]
    return {"sequential": seq, "throughput": thr, "targets": targets, "notes": notes}
