"""The default part: every leg over stdio, sequential latency then throughput at 8 and 32 in flight.

Legs (all against ``bench/downstream.py``):
  direct_ro          the read-only tool ``noop_ro`` called directly (no I/O)
  direct_se          the side-effecting tool ``append`` called directly (appends + fsyncs a line)
  fastmcp            FastMCP ``create_proxy`` with one connected backend client reused (the reference)
  fastmcp_per_req    FastMCP ``create_proxy`` on a transport: a fresh backend session per request
  sdk_proxy          ``bench/sdk_proxy.py``: the least a proxy on the MCP SDK does (no keys, no relays)
  gw_pass            the gateway, ``noop_ro``: pass-through, no key, no store
  gw_first           the gateway, ``append`` with a fresh key per call: claim, call, complete
  gw_replay          the gateway, ``append`` with one key repeated: the stored result
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from kit import (
    Leg,
    downstream_stdio,
    fastmcp_argv,
    gateway_stdio,
    logged,
    new_key,
    outcome_of,
    quiet_env,
    ratio,
    require_fastmcp,
    sdk_proxy_stdio,
    sequential,
    target,
    throughput,
    write_manifest,
)


def gateway_legs(gw: Client, replay_key: str, prefix: str = "gw") -> list[Leg]:
    """Pass-through, first execution and replay through one connected gateway."""
    return [
        Leg(f"{prefix}_pass", lambda i: gw.call_tool("noop_ro", {"x": i}), client=gw),
        Leg(
            f"{prefix}_first",
            lambda i: gw.call_tool("append", {"x": i, "idempotency_key": new_key()}),
            expect="executed",
            client=gw,
        ),
        Leg(
            f"{prefix}_replay",
            lambda i: gw.call_tool("append", {"x": 0, "idempotency_key": replay_key}),
            expect="replayed",
            client=gw,
        ),
    ]


async def first_execution(gw: Client, key: str) -> None:
    """Store the result that the replay leg will replay."""
    result = await gw.call_tool("append", {"x": 0, "idempotency_key": key})
    if outcome_of(result) != "executed":
        raise RuntimeError(f"the gateway did not execute the first call: {result}")


def targets(seq: dict[str, Any]) -> list[dict[str, Any]]:
    def p50(name: str) -> float | None:
        return seq.get(name, {}).get("p50_ms")

    out = []
    out.append(
        target(
            "pass-through <= 0.60x FastMCP (reused client), p50",
            ratio(p50("gw_pass"), p50("fastmcp")),
            "<=",
            0.60,
            "gw_pass / fastmcp",
        )
    )
    budget = None
    if None not in (p50("gw_pass"), p50("direct_se"), p50("direct_ro")):
        budget = p50("gw_pass") + p50("direct_se") - p50("direct_ro")  # type: ignore[operator]
    out.append(
        target(
            "first execution <= 1.25x (pass-through + the tool's own extra cost), p50",
            ratio(p50("gw_first"), budget),
            "<=",
            1.25,
            "gw_first / (gw_pass + direct_se - direct_ro)",
        )
    )
    out.append(
        target(
            "replay <= 1.10x a direct call of the same tool, p50",
            ratio(p50("gw_replay"), p50("direct_se")),
            "<=",
            1.10,
            "gw_replay / direct_se",
        )
    )
    return out


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    async with AsyncExitStack() as stack:

        async def connect(params: StdioServerParameters, name: str) -> Client:
            transport = logged(params, work / f"{name}.log")
            return await stack.enter_async_context(Client(transport, mode=args.mode, cache=None))

        legs: list[Leg] = []
        direct = await connect(downstream_stdio(work / "direct-ledger.jsonl"), "downstream")
        legs += [
            Leg("direct_ro", lambda i: direct.call_tool("noop_ro", {"x": i}), client=direct),
            Leg("direct_se", lambda i: direct.call_tool("append", {"x": i}), client=direct),
        ]
        if not args.no_fastmcp:
            require_fastmcp()
            for name, per_request in (("fastmcp", False), ("fastmcp_per_req", True)):
                argv = fastmcp_argv(ledger=work / f"{name}-ledger.jsonl", per_request=per_request)
                proxy = await connect(
                    StdioServerParameters(command=argv[0], args=argv[1:], env=quiet_env()), name
                )
                legs.append(Leg(name, lambda i, p=proxy: p.call_tool("noop_ro", {"x": i}), client=proxy))

        floor = await connect(sdk_proxy_stdio(work / "sdk-proxy-ledger.jsonl"), "sdk_proxy")
        legs.append(Leg("sdk_proxy", lambda i: floor.call_tool("noop_ro", {"x": i}), client=floor))

        manifests = write_manifest(work / "manifests-stdio", ledger=work / "gw-ledger.jsonl")
        store = f"sqlite:///{work / 'stdio-store' / 'gateway.db'}"
        gw = await connect(gateway_stdio(manifests, store, profile_dir=args.profile_dir), "gateway")
        replay_key = new_key()
        await first_execution(gw, replay_key)
        legs += gateway_legs(gw, replay_key)
        if args.only:
            wanted = set(args.only.split(","))
            legs = [leg for leg in legs if leg.name in wanted]

        seq = await sequential(legs, n=args.n, warmup=args.warmup, seed=args.seed)
        thr: dict[str, Any] = {}
        if args.inflight:
            thr = await throughput(legs, inflights=args.inflight, calls=args.calls, seed=args.seed)
    return {"sequential": seq, "throughput": thr, "targets": targets(seq), "notes": floor_notes(seq)}


def floor_notes(seq: dict[str, Any]) -> list[str]:
    """What the SDK costs any proxy, beside what the gateway adds (no target: a reading aid)."""
    p50 = {name: leg.get("p50_ms") for name, leg in seq.items()}
    if None in (p50.get("gw_pass"), p50.get("sdk_proxy"), p50.get("direct_ro")):
        return []
    floor_over = p50["sdk_proxy"] - p50["direct_ro"]
    gw_over = p50["gw_pass"] - p50["direct_ro"]
    notes = [
        f"pass-through p50 over a direct call: the gateway +{gw_over:.2f} ms, the bare SDK proxy "
        f"+{floor_over:.2f} ms (gw_pass / sdk_proxy = {p50['gw_pass'] / p50['sdk_proxy']:.2f})"
    ]
    if p50.get("fastmcp") is not None:
        notes.append(
            f"the bare SDK proxy / FastMCP p50 = {p50['sdk_proxy'] / p50['fastmcp']:.2f}: "
            "the pass-through target (<= 0.60) is out of reach of any proxy whose floor is above it"
        )
    return notes
