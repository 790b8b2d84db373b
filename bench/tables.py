"""Print the latest figures as Markdown tables (for the READMEs).

python bench/tables.py [bench/results/latest.json] [bench/results/profile.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _v(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def header(part: str, out: dict[str, Any]) -> None:
    m = out["machine"]
    start, end = m.get("loadavg_at_start", ["?"])[0], m.get("loadavg_at_end", ["?"])[0]
    print(
        f"\n### {part}\n\n{out['at']}, {out['seconds']:.0f} s, load average {start} at start "
        f"and {end} at end ({m['cpus']} cpus, Python {m['python']})."
    )
    for note in out.get("notes", []):
        print(f"- {note}")


def sequential(seq: dict[str, Any]) -> None:
    if not seq:
        return
    print("\n| leg | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|")
    for name, f in seq.items():
        cells = [_v(f.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
        print(f"| `{name}` | " + " | ".join(cells) + " |")


def throughput(thr: dict[str, Any]) -> None:
    if not thr:
        return
    levels = sorted({int(k) for v in thr.values() for k in v})
    print("\n| leg | " + " | ".join(f"@{c} calls/s | p50 | p99" for c in levels) + " |")
    print("|---|" + "---|---|---|" * len(levels))
    for name, by in thr.items():
        cells = []
        for c in levels:
            f = by.get(str(c), {})
            cells += [_v(f.get("calls_per_s"), 0), _v(f.get("p50_ms"), 1), _v(f.get("p99_ms"), 1)]
        print(f"| `{name}` | " + " | ".join(cells) + " |")


def targets(ts: list[dict[str, Any]]) -> None:
    print("\n| target | value | verdict |\n|---|---|---|")
    for t in ts:
        print(
            f"| {t['target']} (`{t['how']}`) | {_v(t['value'], 3)} | {'PASS' if t['pass'] else '**MISS**'} |"
        )


def part(name: str, out: dict[str, Any]) -> None:
    header(name, out)
    sequential(out.get("sequential", {}))
    throughput(out.get("throughput", {}))
    if name == "http" and out.get("cpu_ms_per_call"):
        procs = sorted({p for v in out["cpu_ms_per_call"].values() for p in v})
        ceilings = out.get("cpu_ceiling", {})
        print("\nCPU ms per call (sequential):\n\n| leg | " + " | ".join(procs) + " | all | ceiling |")
        print("|---|" + "---|" * (len(procs) + 2))
        for leg, v in out["cpu_ms_per_call"].items():
            cells = [_v(v.get(p)) for p in procs] + [_v(sum(v.values())), _v(ceilings.get(leg))]
            print(f"| `{leg}` | " + " | ".join(cells) + " |")
    if out.get("replicas"):
        r = out["replicas"]
        print(
            f"\nReplicas: {r['replicas']} stateless gateways on one PostgreSQL, {r['actions']} actions x 2 "
            f"copies at {r['inflight']} in flight: {r['calls_per_s']} calls/s, p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms; outcomes {r['outcomes']}; ledger: {r['executions']} executions, "
            f"**{r['duplicates']} duplicates**, {r['missing']} missing."
        )
    if out.get("sizes"):
        print("\n| store | keys | claim p50 ms | replay p50 ms | store MB |\n|---|---|---|---|---|")
        for backend, sizes in out["sizes"].items():
            for size, f in sizes.items():
                print(
                    f"| {backend} | {int(size):,} | {_v(f['claim'].get('p50_ms'))} | "
                    f"{_v(f['replay'].get('p50_ms'))} | {f['store_bytes'] / 1e6:.0f} |"
                )
        print(f"\nStore size per 1k keys (a record and its event): {out.get('mb_per_1k_keys')} MB.")
    if out.get("rss"):
        r = out["rss"]
        series = ", ".join(f"{n // 1000}k {mb:.0f}" for n, mb in r["series_mb"])
        print(f"\nGateway RSS (MB) over {r['calls']:,} calls at {r['calls_per_s']} calls/s: {series}.")
    targets(out.get("targets", []))


def profile(data: dict[str, Any]) -> None:
    print(f"\n### profile ({data['at']}, load average {data['loadavg'][0]:.1f}, store {data['store']})")
    legs = data["legs"]
    names = list(legs)
    print("\n| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    rows = [
        ("wall ms per call", "wall_ms_per_call"),
        ("loop busy (CPU) ms per call", "loop_busy_ms_per_call"),
    ]
    for label, key in rows:
        print(f"| {label} | " + " | ".join(_v(legs[n][key], 3) for n in names) + " |")
    counts = sorted({k for n in names for k in legs[n]["per_call"]})
    for k in counts:
        print(f"| {k} per call | " + " | ".join(_v(legs[n]["per_call"].get(k), 1) for n in names) + " |")
    cats = list(next(iter(legs.values()))["cprofile_ms_per_call"])
    print(
        "\nms of loop CPU per call by category (cProfile on the CPU clock), py-spy's share of wall samples:\n"
    )
    print("| category | " + " | ".join(f"{n} ms | {n} py-spy %" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for c in cats:
        cells = []
        for n in names:
            cells.append(_v(legs[n]["cprofile_ms_per_call"].get(c), 3))
            cells.append(_v(legs[n].get("py_spy_percent", {}).get(c), 0))
        print(f"| {c} | " + " | ".join(cells) + " |")


def main() -> None:
    latest = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    prof = Path(sys.argv[2]) if len(sys.argv) > 2 else RESULTS / "profile.json"
    if latest.exists():
        for name, out in json.loads(latest.read_text())["parts"].items():
            part(name, out)
    if prof.exists():
        profile(json.loads(prof.read_text()))


if __name__ == "__main__":
    main()
