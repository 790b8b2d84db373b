"""Where one call's time goes in the gateway's event-loop thread: pass-through, first execution, replay.

    python bench/hotpath.py [--calls 2000] [--legs pass,first,replay] [--no-py-spy] [--store URL]
                            [--replay-cache SECONDS]

Per leg, a stdio gateway (SQLite, or ``--store``) is started under ``bench/profiled_gateway.py``
and warmed up; then three windows of ``--calls`` sequential calls each:

1. counters only: the loop thread's CPU time per call (its busy time), loop passes, anyio
   checkpoints, memory-stream sends (hops between tasks), tasks created, and the wall-time
   probes of the hot path (``store.claim``, ``guard.run``, ...);
2. cProfile of the loop thread: self time per function, summed by category;
3. py-spy (``bench/.venv-plot/bin/py-spy``, if present) sampling the loop thread at 1 kHz:
   a sample goes to tracing, jsonschema, store or JSON+pydantic if any of its frames is theirs
   (in that order), else to the category of its innermost Python frame.

cProfile runs on the thread's CPU clock; its category shares are applied to the busy time of 1
(its own overhead inflates small functions). py-spy samples wall time while the thread is not
idle, so a write that wakes the peer process and waits for a core counts there and not in CPU
time; its shares are shown as percentages beside cProfile's. Writes
``bench/results/profile.json`` and prints one table per leg.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kit import BENCH, children_matching, gateway_stdio, isolate, logged, new_key, write_manifest
from part_stdio import first_execution

PY_SPY = BENCH / ".venv-plot" / "bin" / "py-spy"
RESULTS = BENCH / "results" / "profile.json"

CATEGORIES = (
    "transport (stdio pipes, both sides)",
    "JSON + pydantic (parse, validate, dump)",
    "jsonschema (arguments)",
    "store (SQL, driver, records)",
    "gateway logic (guard, call_tool, keys, fingerprint, audit events)",
    "MCP SDK session / dispatch",
    "event loop + anyio plumbing",
    "logging",
    "other (stdlib: uuid, datetime, hashlib, ...)",
    "tracing (the SDK's OpenTelemetry spans)",
)
TRACING = CATEGORIES[9]
# py-spy: a sample that has a frame of one of these anywhere in its stack belongs to it (first
# match wins), because their own callees (stdlib, contextlib, re, json) are their cost too.
INCLUSIVE = (TRACING, CATEGORIES[2], CATEGORIES[3], CATEGORIES[1])
IDLE = "idle"
INSTRUMENT = "instrument"


def classify(filename: str, func: str) -> str:
    """The category of one frame (a file and a function name; builtins have no file)."""
    f = filename.replace("\\", "/")
    name = func
    if f in ("~", "") or f.startswith("<"):  # a builtin: the name says whose it is
        if "epoll" in name or "select.poll" in name:
            return IDLE
        if "sqlite3" in name or "psycopg" in name:
            return CATEGORIES[3]
        if "pydantic" in name or "json" in name.lower():
            return CATEGORIES[1]
        if "posix.read" in name or "posix.write" in name or "socket" in name:
            return CATEGORIES[0]
        if "_contextvars" in name or "_asyncio" in name or "Task" in name or "Future" in name:
            return CATEGORIES[6]
        if "_thread" in name or "lock" in name.lower():
            return CATEGORIES[6]
        if "hashlib" in name or "_hashlib" in name or "hmac" in name:
            return CATEGORIES[4]
        return CATEGORIES[8]
    if "profiled_gateway.py" in f:
        return INSTRUMENT
    if "/opentelemetry/" in f or "/mcp/shared/_otel" in f:
        return TRACING
    if "/gateway/store/" in f or "/sqlalchemy/" in f or "/psycopg" in f or "/sqlite3/" in f:
        return CATEGORIES[3]
    if "/jsonschema" in f or "/referencing/" in f or "/rpds" in f:
        return CATEGORIES[2]
    if "/pydantic" in f or "/json/" in f:
        return CATEGORIES[1]
    if (
        "/gateway/server/stdio.py" in f
        or "/mcp/client/stdio" in f
        or "/mcp/server/stdio" in f
        or "/asyncio/streams.py" in f
        or "/asyncio/unix_events.py" in f
        or "/asyncio/selector_events.py" in f
        or "/asyncio/subprocess.py" in f
        or "/asyncio/base_subprocess.py" in f
    ):
        return CATEGORIES[0]
    if "/gateway/" in f:
        return CATEGORIES[4]
    if "/mcp/shared/_context_streams" in f:
        return CATEGORIES[6]
    if "/mcp/" in f or "/mcp_types/" in f:
        return CATEGORIES[5]
    if "/asyncio/" in f or "/anyio/" in f or "selectors.py" in f or "contextlib.py" in f or "/sniffio/" in f:
        return CATEGORIES[6]
    if "/logging/" in f:
        return CATEGORIES[7]
    return CATEGORIES[8]


def cprofile_shares(path: Path) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """CPU self time by category (seconds) and the top functions; idle and instruments left out.

    Generic helpers (``dict.get``, ``isinstance``, ``dataclasses``, ...) are charged to the
    category of whoever called them, in proportion to the time each caller spent in them.
    """
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by: Counter[str] = Counter()
    funcs: Counter[tuple[str, str]] = Counter()
    for (filename, line, func), (_cc, _nc, tottime, _ct, callers) in stats.items():
        category = classify(filename, func)
        if category in (IDLE, INSTRUMENT):
            continue
        short = "/".join(filename.split("/")[-2:])
        funcs[(f"{short}:{line} {func}", category)] += tottime
        if category == CATEGORIES[8] and callers:
            spent = sum(v[2] for v in callers.values()) or 1.0
            for (c_file, _c_line, c_func), v in callers.items():
                c_cat = classify(c_file, c_func)
                if c_cat in (IDLE, INSTRUMENT):
                    c_cat = CATEGORIES[8]
                by[c_cat] += tottime * v[2] / spent
            continue
        by[category] += tottime
    return dict(by), [(f, c, t) for (f, c), t in funcs.most_common(30)]


def pyspy_shares(path: Path) -> tuple[dict[str, float], int]:
    """Samples of the loop thread by the category of their innermost Python frame."""
    by: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if not any("_run_once (" in fr for fr in frames):
            continue  # not the event-loop thread
        cats = []
        for frame in frames:
            func, _, where = frame.partition(" (")
            cats.append(classify(where.rsplit(":", 1)[0], func))
        func, _, where = frames[-1].partition(" (")
        if where.rsplit(":", 1)[0].endswith("selectors.py") and func.endswith("select"):
            # py-spy shows no native frames: a sample inside epoll_wait (or runnable again after
            # it, waiting for a core) has the selector's select() as its leaf: waiting, not work.
            category = IDLE
        else:
            category = next((c for c in INCLUSIVE if c in cats), cats[-1])
        if category in (IDLE, INSTRUMENT):
            continue
        by[category] += int(count)
        total += int(count)
    return dict(by), total


async def profile_leg(leg: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out_dir = work / f"profile-{leg}"
    manifests = write_manifest(work / f"manifests-{leg}", ledger=work / f"{leg}-ledger.jsonl")
    store = args.store or f"sqlite:///{work / f'store-{leg}' / 'gateway.db'}"
    params = gateway_stdio(manifests, store, profile_dir=out_dir)
    if args.replay_cache is not None:
        params.env = {**(params.env or {}), "IDEM_GATEWAY_REPLAY_CACHE": args.replay_cache}
    async with AsyncExitStack() as stack:
        gw = await stack.enter_async_context(
            Client(
                logged(params, work / f"gateway-{leg}.log"),
                mode=args.mode,
                cache=None,
            )
        )
        pids = children_matching(str(out_dir))
        pids = [p for p in pids if "profiled_gateway.py" in Path(f"/proc/{p}/cmdline").read_text()]
        if len(pids) != 1:
            raise RuntimeError(f"cannot tell the profiled gateway's pid among {pids}")
        pid = pids[0]
        replay_key = new_key()
        await first_execution(gw, replay_key)

        async def call(i: int) -> None:
            if leg == "pass":
                result = await gw.call_tool("noop_ro", {"x": i})
            elif leg == "first":
                result = await gw.call_tool("append", {"x": i, "idempotency_key": new_key()})
            else:
                result = await gw.call_tool("append", {"x": 0, "idempotency_key": replay_key})
            if result.is_error:
                raise RuntimeError(f"{leg}: {result}")

        for i in range(args.warmup):
            await call(i)
        windows: list[dict[str, Any]] = []
        for n, mode in enumerate(("counters", "cprofile", "py-spy"), start=1):
            spy: subprocess.Popen[bytes] | None = None
            spy_out = out_dir / "py-spy.txt"
            if mode == "py-spy":
                if args.no_py_spy or not PY_SPY.exists():
                    break
                spy = subprocess.Popen(
                    [
                        str(PY_SPY),
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "1000",
                        "--format",
                        "raw",
                        "--full-filenames",
                        "--output",
                        str(spy_out),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=open(out_dir / "py-spy.log", "wb"),
                )
                await anyio.sleep(1.0)  # py-spy attaches
            (out_dir / "next-window").write_text("cprofile" if mode == "cprofile" else "counters")
            os.kill(pid, signal.SIGUSR1)
            await anyio.sleep(0.05)
            for i in range(args.calls):
                await call(i)
            os.kill(pid, signal.SIGUSR2)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with anyio.fail_after(30):
                    while spy.poll() is None:
                        await anyio.sleep(0.05)
            window = out_dir / f"window-{n}.json"
            with anyio.fail_after(30):
                while not window.exists():
                    await anyio.sleep(0.02)
            windows.append(json.loads(window.read_text()))
    calls = args.calls
    first = windows[0]
    busy_ms = first["cpu_s"] * 1000 / calls
    result: dict[str, Any] = {
        "calls_per_window": calls,
        "wall_ms_per_call": round(first["wall_s"] * 1000 / calls, 3),
        "loop_busy_ms_per_call": round(busy_ms, 3),
        "process_cpu_ms_per_call": round(first["process_cpu_s"] * 1000 / calls, 3),
        "per_call": {k: round(v / calls, 1) for k, v in sorted(first["counts"].items())},
        "probes_p50_ms": {k: v["p50_ms"] for k, v in first["probes"].items()},
    }
    shares, top = cprofile_shares(out_dir / "window-2.pstats")
    total = sum(shares.values()) or 1.0
    result["cprofile_ms_per_call"] = {c: round(shares.get(c, 0) / total * busy_ms, 3) for c in CATEGORIES}
    result["cprofile_top"] = [(f, c, round(s * 1000 / calls, 4)) for f, c, s in top]
    spy_file = out_dir / "py-spy.txt"
    if len(windows) == 3 and spy_file.exists():
        samples, n_samples = pyspy_shares(spy_file)
        if n_samples:
            result["py_spy_samples"] = n_samples
            result["py_spy_percent"] = {c: round(samples.get(c, 0) / n_samples * 100, 1) for c in CATEGORIES}
    return result


def report(leg: str, r: dict[str, Any]) -> None:
    print(
        f"\n== {leg}: wall {r['wall_ms_per_call']} ms/call, loop busy {r['loop_busy_ms_per_call']} ms/call "
        f"(all threads {r['process_cpu_ms_per_call']})"
    )
    print("   per call: " + ", ".join(f"{k} {v}" for k, v in r["per_call"].items()))
    print(f"   {'category':<68}{'cProfile ms':>12}{'%':>6}{'py-spy %':>10}")
    spy = r.get("py_spy_percent", {})
    busy = r["loop_busy_ms_per_call"] or 1.0
    for c in CATEGORIES:
        ms = r["cprofile_ms_per_call"][c]
        print(f"   {c:<68}{ms:>12.3f}{ms / busy * 100:>6.0f}{_f(spy.get(c)):>10}")
    print("   probes p50 ms: " + ", ".join(f"{k} {v}" for k, v in r["probes_p50_ms"].items()))


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="idem-profile-"))
    isolate(work)
    results: dict[str, Any] = {
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg": os.getloadavg(),
        "store": args.store or "sqlite",
        "legs": {},
    }
    for leg in args.legs.split(","):
        results["legs"][leg] = await profile_leg(leg, args, work)
        report(leg, results["legs"][leg])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json} (raw profiles in {work})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--legs", default="pass,first,replay")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--store", help="a store URL for every leg (default: a fresh SQLite file per leg)")
    parser.add_argument(
        "--replay-cache", metavar="SECONDS", help="the gateway's --replay-cache (0: replays read the store)"
    )
    parser.add_argument("--no-py-spy", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    anyio.run(main, parser.parse_args())
