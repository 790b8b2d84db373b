"""Latency benchmark: the gateway against a direct call and FastMCP's proxy, in one run.

    python bench/bench.py [--n 300] [--warmup 30] [--mode auto|legacy|2026-07-28] [--json PATH]

Every leg is a real ``mcp.Client`` (``cache=None``) talking over stdio to a subprocess, all
connected with the same ``mode`` (the revision each one negotiated is printed). Calls are
sequential; the legs are interleaved round by round in a shuffled order, so a noisy neighbour
on a shared machine slows every leg alike instead of whichever happened to run then.

Legs, all calling the trivial server in ``bench/trivial_server.py``:
  direct       the downstream itself (noop_ro)
  fastmcp      FastMCP's ``create_proxy`` in front of it (noop_ro), from ``bench/.venv-fastmcp``
  fastmcp_reuse  the same with one shared backend session (only with ``--fastmcp-reuse``)
  passthrough  our gateway, read-only tool (noop_ro): no key, no store
  durable      our gateway, side-effecting tool (noop) with a fresh key: claim + call + complete
  replay       our gateway, side-effecting tool (noop) with one key repeated: a stored result

Targets (ratios of p50): passthrough <= 0.6 x fastmcp; durable <= 1.25 x passthrough;
replay <= 1.1 x direct. Figures only: nothing here asserts; machines are noisy.

``IDEM_BENCH_PROFILE=DIR`` runs the gateway under ``bench/profiled_gateway.py`` (cProfile of the
event-loop thread, one ``.pstats`` file per leg phase) - see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SERVER = BENCH / "trivial_server.py"
FASTMCP_PYTHON = BENCH / ".venv-fastmcp" / "bin" / "python"
RESULTS = BENCH / "results" / "latest.json"

TARGETS: list[tuple[str, str, str, float]] = [
    # (name, numerator leg, denominator leg, at most)
    ("passthrough / fastmcp", "passthrough", "fastmcp", 0.6),
    ("durable / passthrough", "durable", "passthrough", 1.25),
    ("replay / direct", "replay", "direct", 1.1),
]

Call = Callable[[int], Awaitable[Any]]


@dataclass
class Leg:
    name: str
    client: Client
    call: Call
    expect_outcome: str | None = None
    samples: list[float] = field(default_factory=list)
    failures: int = 0


def manifest_text() -> str:
    return "\n".join(
        [
            "[server]",
            'name = "trivial"',
            'transport = "stdio"',
            f"command = {json.dumps(sys.executable)}",
            f"args = [{json.dumps(str(SERVER))}]",
            'timeout = "30s"',
            "",
            "[defaults]",
            'side_effects = "auto"',
            'retention = "24h"',
            "",
        ]
    )


def gateway_params(tmp: Path, profile_dir: str | None) -> StdioServerParameters:
    manifests = tmp / "manifests"
    manifests.mkdir()
    (manifests / "trivial.toml").write_text(manifest_text())
    store = f"sqlite:///{tmp / 'store' / 'gateway.db'}"
    argv = ["serve", "--manifests", str(manifests), "--store", store, "--principal", "bench"]
    if profile_dir:
        args = [str(BENCH / "profiled_gateway.py"), profile_dir, *argv]
    else:
        args = ["-m", "gateway", *argv]
    return StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ), cwd=str(tmp))


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, min(len(sorted_ms), round(q / 100 * len(sorted_ms) + 0.5)))
    return sorted_ms[rank - 1]


def summarise(leg: Leg) -> dict[str, Any]:
    ms = sorted(leg.samples)
    return {
        "n": len(ms),
        "failures": leg.failures,
        "p50_ms": round(statistics.median(ms), 3) if ms else None,
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else None,
        "min_ms": round(ms[0], 3) if ms else None,
        "protocol_version": leg.client.protocol_version,
    }


def _ro_call(client: Client) -> Call:
    return lambda i: client.call_tool("noop_ro", {"x": i})


def outcome_of(result: Any) -> str | None:
    meta = result.meta or {}
    value = meta.get("idem-gateway/outcome")
    return value if isinstance(value, str) else None


async def timed(leg: Leg, i: int, record: bool) -> None:
    started = time.perf_counter()
    result = await leg.call(i)
    elapsed = (time.perf_counter() - started) * 1000
    ok = not result.is_error and (leg.expect_outcome is None or outcome_of(result) == leg.expect_outcome)
    if not ok:
        leg.failures += 1
    if record:
        leg.samples.append(elapsed)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    profile_dir = os.environ.get("IDEM_BENCH_PROFILE") or None
    tmp = Path(tempfile.mkdtemp(prefix="idem-bench-"))
    server = StdioServerParameters(command=sys.executable, args=[str(SERVER)], env=dict(os.environ))
    async with AsyncExitStack() as stack:

        async def connect(params: StdioServerParameters) -> Client:
            return await stack.enter_async_context(Client(params, mode=args.mode, cache=None))

        legs: list[Leg] = []
        direct = await connect(server)
        legs.append(Leg("direct", direct, lambda i: direct.call_tool("noop_ro", {"x": i})))

        if not args.no_fastmcp:
            if not FASTMCP_PYTHON.exists():
                sys.exit(f"{FASTMCP_PYTHON} is missing: see bench/README.md (or pass --no-fastmcp)")
            shapes: list[tuple[str, list[str]]] = [("fastmcp", [])]
            if args.fastmcp_reuse:
                shapes.append(("fastmcp_reuse", ["--reuse"]))
            for name, extra in shapes:
                proxy = await connect(
                    StdioServerParameters(
                        command=str(FASTMCP_PYTHON),
                        args=[str(BENCH / "fastmcp_proxy.py"), sys.executable, str(SERVER), *extra],
                        env={**os.environ, "FASTMCP_LOG_LEVEL": "WARNING"},
                    )
                )
                legs.append(Leg(name, proxy, _ro_call(proxy)))

        gw = await connect(gateway_params(tmp, profile_dir))
        replay_key = f"bench-replay-{uuid.uuid4()}"
        first = await gw.call_tool("noop", {"x": 0, "idempotency_key": replay_key})
        assert outcome_of(first) == "executed", first
        legs += [
            Leg("passthrough", gw, lambda i: gw.call_tool("noop_ro", {"x": i})),
            Leg(
                "durable",
                gw,
                lambda i: gw.call_tool("noop", {"x": i, "idempotency_key": f"bench-{uuid.uuid4()}"}),
                expect_outcome="executed",
            ),
            Leg(
                "replay",
                gw,
                lambda i: gw.call_tool("noop", {"x": 0, "idempotency_key": replay_key}),
                expect_outcome="replayed",
            ),
        ]
        if args.only:
            wanted = set(args.only.split(","))
            legs = [leg for leg in legs if leg.name in wanted]

        rng = random.Random(args.seed)
        for rnd in range(args.warmup + args.n):
            order = legs[:]
            rng.shuffle(order)
            for leg in order:
                await timed(leg, rnd, record=rnd >= args.warmup)

        figures = {leg.name: summarise(leg) for leg in legs}

    ratios = []
    for name, num, den, limit in TARGETS:
        if num in figures and den in figures:
            value = figures[num]["p50_ms"] / figures[den]["p50_ms"]
            ratios.append({"ratio": name, "value": round(value, 3), "target": limit, "pass": value <= limit})
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "n": args.n,
        "warmup": args.warmup,
        "mode": args.mode,
        "legs": figures,
        "ratios": ratios,
    }


def report(out: dict[str, Any]) -> None:
    print(
        f"\n{out['at']}  {out['machine']['platform']}  cpus={out['machine']['cpus']}  "
        f"n={out['n']} warmup={out['warmup']} mode={out['mode']}"
    )
    print(f"{'leg':<14}{'revision':>12}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean':>9}{'fail':>6}")
    for name, f in out["legs"].items():
        print(
            f"{name:<14}{f['protocol_version']:>12}{f['p50_ms']:>9.3f}{f['p90_ms']:>9.3f}"
            f"{f['p99_ms']:>9.3f}{f['mean_ms']:>9.3f}{f['failures']:>6}"
        )
    print()
    for r in out["ratios"]:
        verdict = "PASS" if r["pass"] else "MISS"
        print(f"{r['ratio']:<24}{r['value']:>7.3f}  target <= {r['target']:<5} {verdict}")
    revisions = {f["protocol_version"] for f in out["legs"].values()}
    if len(revisions) > 1:
        print(f"WARNING: legs negotiated different revisions: {sorted(revisions)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="measured calls per leg")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured calls per leg first")
    parser.add_argument("--mode", default="auto", help="every leg's Client mode: auto, legacy or a revision")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round leg order")
    parser.add_argument("--only", help="comma-separated legs to run (e.g. durable,replay)")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip the FastMCP leg")
    parser.add_argument("--fastmcp-reuse", action="store_true", help="also FastMCP with a shared session")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args(argv)
    out = anyio.run(run, args)
    report(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
