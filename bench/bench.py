"""The gateway's benchmark: what a user would compare, as ratios within one run.

    python bench/bench.py                 # stdio legs (the default part, ~1-2 min)
    python bench/bench.py --http          # + streamable HTTP legs and three replicas on PostgreSQL
    python bench/bench.py --pg            # + PostgreSQL against SQLite (first execution, replay)
    python bench/bench.py --scale         # + 10k/100k/1M stored keys, RSS over 100k calls, store size
    python bench/bench.py --only-parts http,pg   # just those parts

Every gateway is started from this checkout with ``sys.executable -m gateway serve``. Every
ratio is printed with PASS/MISS against its target (issues 12 and 15); nothing asserts, the
machine is shared. Figures go to ``bench/results/latest.json`` (a part not run keeps its last
figures there, with their own time stamp). See bench/README.md for what each leg times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kit import BENCH, isolate, log_warnings, machine

RESULTS = BENCH / "results" / "latest.json"
PARTS = ("stdio", "http", "pg", "scale")


def _fmt(value: Any, width: int, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{value:>{width}.{digits}f}"
    return f"{value!s:>{width}}"


def print_sequential(seq: dict[str, Any], title: str) -> None:
    if not seq:
        return
    print(f"\n{title}")
    print(f"{'leg':<18}{'revision':>12}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean':>9}{'fail':>6}")
    for name, f in seq.items():
        print(
            f"{name:<18}{_fmt(f.get('protocol_version'), 12)}"
            f"{_fmt(f.get('p50_ms'), 9)}{_fmt(f.get('p90_ms'), 9)}"
            f"{_fmt(f.get('p99_ms'), 9)}{_fmt(f.get('mean_ms'), 9)}{_fmt(f.get('failures'), 6)}"
        )
        if f.get("first_failure"):
            print(f"    first failure: {f['first_failure'][:200]}")


def print_throughput(thr: dict[str, Any], title: str) -> None:
    if not thr:
        return
    levels = sorted({int(k) for v in thr.values() for k in v})
    print(f"\n{title}")
    head = f"{'leg':<18}" + "".join(f"{'@' + str(c) + ' calls/s':>15}{'p50':>8}{'p99':>8}" for c in levels)
    print(head + f"{'fail':>6}")
    for name, by in thr.items():
        row = f"{name:<18}"
        fails = 0
        for c in levels:
            f = by.get(str(c), {})
            fails += f.get("failures", 0) or 0
            row += _fmt(f.get("calls_per_s"), 15, 1)
            row += f"{_fmt(f.get('p50_ms'), 8, 2)}{_fmt(f.get('p99_ms'), 8, 2)}"
        print(row + f"{fails:>6}")


def print_targets(targets: list[dict[str, Any]]) -> None:
    for t in targets:
        verdict = "PASS" if t["pass"] else "MISS"
        print(f"  {verdict}  {_fmt(t['value'], 7)} {t['op']} {t['limit']:<5} {t['target']}   [{t['how']}]")


def report(part: str, out: dict[str, Any]) -> None:
    load = out["machine"]
    print(
        f"\n==== {part} ({out['seconds']:.0f} s; load average {load['loadavg_at_start'][0]} at start, "
        f"{load['loadavg_at_end'][0]} at end, {load['cpus']} cpus) ===="
    )
    if out.get("error"):
        print(f"FAILED: {out['error'][:500]}")
    for note in out.get("notes", []):
        print(f"note: {note}")
    print_sequential(out.get("sequential", {}), "sequential latency (interleaved)")
    print_throughput(out.get("throughput", {}), "throughput")
    for name, extra in out.get("tables", {}).items():
        print(f"\n{name}")
        for line in extra:
            print(f"  {line}")
    print("\ntargets")
    print_targets(out.get("targets", []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--http", action="store_true", help="also the streamable HTTP legs (+ replicas on PG)"
    )
    parser.add_argument("--pg", action="store_true", help="also PostgreSQL against SQLite")
    parser.add_argument("--scale", action="store_true", help="also the stored-keys, RSS and store-size legs")
    parser.add_argument("--only-parts", help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--n", type=int, default=300, help="measured sequential calls per leg")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured sequential calls per leg first")
    parser.add_argument("--calls", type=int, default=400, help="calls per leg per in-flight level")
    parser.add_argument(
        "--inflight",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[8, 32],
        help="stdio throughput levels (default 8,32; empty to skip)",
    )
    parser.add_argument(
        "--http-inflight", type=lambda s: [int(x) for x in s.split(",") if x], default=[8, 32, 128]
    )
    parser.add_argument("--mode", default="auto", help="every client's mode: auto, legacy or a revision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="stdio part: comma-separated legs to run")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip the FastMCP legs")
    parser.add_argument("--no-replicas", action="store_true", help="http part: skip the replica leg")
    parser.add_argument(
        "--replica-actions", type=int, default=400, help="replica leg: actions, each sent twice"
    )
    parser.add_argument("--pg-fsync", action="store_true", help="PostgreSQL with fsync=on (default off)")
    parser.add_argument(
        "--scale-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000, 1_000_000]
    )
    parser.add_argument("--scale-n", type=int, default=200, help="measured calls per scale leg and size")
    parser.add_argument("--rss-calls", type=int, default=100_000)
    parser.add_argument("--no-scale-pg", action="store_true", help="scale part on SQLite only")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (stores, ledgers, logs)")
    args = parser.parse_args(argv)
    args.profile_dir = (
        Path(os.environ["IDEM_BENCH_PROFILE"]) if os.environ.get("IDEM_BENCH_PROFILE") else None
    )

    if args.only_parts:
        parts = [p for p in args.only_parts.split(",") if p]
        unknown = set(parts) - set(PARTS)
        if unknown:
            parser.error(f"unknown parts: {sorted(unknown)}")
    else:
        parts = ["stdio"] + [p for p in ("http", "pg", "scale") if getattr(args, p)]

    work = Path(tempfile.mkdtemp(prefix="idem-bench-"))
    isolate(work)
    print(f"work directory: {work}", flush=True)
    results: dict[str, Any] = {}
    if args.json.exists():
        try:
            results = json.loads(args.json.read_text())
        except ValueError:
            results = {}
    results.setdefault("parts", {})
    started_all = time.perf_counter()
    try:
        for part in parts:
            runner = _runner(part)
            folder = work / part
            folder.mkdir()
            print(f"\n.. {part} part running", flush=True)
            started = time.perf_counter()
            load_before = [round(x, 2) for x in os.getloadavg()]
            try:
                out = anyio.run(runner, args, folder)
            except Exception as exc:  # one part failing must not lose the others' figures
                import traceback

                traceback.print_exc()
                out = {"error": f"{type(exc).__name__}: {exc}"[:2000], "targets": []}
            out["seconds"] = round(time.perf_counter() - started, 1)
            out.setdefault("notes", []).extend(log_warnings(folder))
            out["at"] = datetime.now(UTC).isoformat(timespec="seconds")
            out["machine"] = {**machine(), "loadavg_at_start": load_before}
            out["settings"] = {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"
            }
            results["parts"][part] = out
            report(part, out)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if "pgcluster" in sys.modules:
            sys.modules["pgcluster"].stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(f"\nall parts: {time.perf_counter() - started_all:.0f} s; wrote {args.json}")
    summary = [(p, t) for p in parts for t in results["parts"][p].get("targets", [])]
    missed = ", ".join(f"{p}: {t['target']}" for p, t in summary if not t["pass"]) or "none"
    failed = [p for p in parts if results["parts"][p].get("error")]
    if failed:
        print(f"FAILED parts (their figures are missing): {', '.join(failed)}")
    print(f"PASS {sum(t['pass'] for _, t in summary)} / {len(summary)}; MISS: {missed}")


def _runner(part: str) -> Callable[[argparse.Namespace, Path], Awaitable[dict[str, Any]]]:
    if part == "stdio":
        import part_stdio

        return part_stdio.run
    if part == "http":
        import part_http

        return part_http.run
    if part == "pg":
        import part_pg

        return part_pg.run
    import part_scale

    return part_scale.run


if __name__ == "__main__":
    main()
