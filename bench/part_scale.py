"""Scale: latency with 10k, 100k and 1M stored keys; RSS over 100k calls; the store's size per key.

Stored keys are written straight into the store (bulk inserts: executemany on SQLite, COPY on
PostgreSQL), as copies of one real record that the gateway itself wrote: every table with a
``key`` column gets one row per key, copied from the template key's rows with only the key
changed (an auto-increment ``id`` is left to the database). So the bench follows the store's
schema as it changes. Keys are hashes, so they land all over the indexes like real ones.

One store and one stdio gateway per size (and store kind), all legs of all sizes interleaved
round by round: ``claim`` = a first execution with a fresh key (the fsync tool), ``replay`` = a
replay of a random pre-stored key (a cold record, not the one hot key of the stdio part).
Target: p50 at the largest size <= 1.2x the p50 at the smallest. Then RSS: a fresh gateway,
100k calls at 32 in flight (a new key, then its replay, alternately), RSS sampled every 10k
calls; target: the end within 1.10x of the start. A plot of both goes to ``bench/scale.png``
(matplotlib from ``bench/.venv-plot``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

from mcp import Client

import pgcluster
from kit import (
    BENCH,
    PLOT_PYTHON,
    Leg,
    _burst,
    children_matching,
    gateway_stdio,
    logged,
    new_key,
    ratio,
    rss_mb,
    sequential,
    target,
    write_manifest,
)
from part_stdio import first_execution

PLOT = BENCH / "scale.png"
DEFAULT_JSON = BENCH / "results" / "latest.json"
CHUNK = 20_000


def scale_key(i: int) -> str:
    return "scale-" + hashlib.blake2b(i.to_bytes(8, "big"), digest_size=12).hexdigest()


def _keys(start: int, stop: int) -> Iterator[str]:
    return (scale_key(i) for i in range(start, stop))


# ---- bulk loading ------------------------------------------------------------------------------


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def bulk_sqlite(url: str, template: str, start: int, stop: int) -> None:
    conn = sqlite3.connect(_sqlite_path(url), timeout=60, isolation_level=None)
    try:
        plans = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
            names = [row[1] for row in info]
            if "key" not in names:
                continue
            pks = [row for row in info if row[5]]
            rowid = pks[0][1] if len(pks) == 1 and str(pks[0][2]).upper() == "INTEGER" else None
            cols = [n for n in names if n != rowid]
            quoted = ", ".join(f'"{c}"' for c in cols)
            rows = conn.execute(f'SELECT {quoted} FROM "{table}" WHERE "key" = ?', (template,)).fetchall()
            sql = f'INSERT INTO "{table}" ({quoted}) VALUES ({", ".join("?" * len(cols))})'
            plans.append((sql, cols.index("key"), rows))
        for lo in range(start, stop, CHUNK):
            hi = min(stop, lo + CHUNK)
            conn.execute("BEGIN IMMEDIATE")
            for sql, at, rows in plans:
                conn.executemany(sql, ([*r[:at], k, *r[at + 1 :]] for k in _keys(lo, hi) for r in rows))
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def bulk_pg(url: str, template: str, start: int, stop: int) -> None:
    with pgcluster.connect(url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name = 'key'"
        ).fetchall()
        plans = []
        for (table,) in tables:
            info = conn.execute(
                "SELECT column_name, column_default, is_identity FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            cols = [
                n
                for n, default, ident in info
                if ident != "YES" and not str(default or "").startswith("nextval")
            ]
            quoted = ", ".join(f'"{c}"' for c in cols)
            rows = conn.execute(f'SELECT {quoted} FROM "{table}" WHERE "key" = %s', (template,)).fetchall()  # type: ignore[arg-type]
            plans.append((f'COPY "{table}" ({quoted}) FROM STDIN', cols.index("key"), rows))
        for lo in range(start, stop, CHUNK * 5):
            hi = min(stop, lo + CHUNK * 5)
            with conn.cursor() as cur:
                for sql, at, rows in plans:
                    with cur.copy(sql) as copy:  # type: ignore[arg-type]
                        for k in _keys(lo, hi):
                            for r in rows:
                                copy.write_row([*r[:at], k, *r[at + 1 :]])
            conn.commit()
    with pgcluster.connect(url) as conn:
        conn.autocommit = True
        conn.execute("ANALYZE")


def store_bytes(url: str) -> int:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with pgcluster.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
        return int(row[0]) if row else 0


# ---- the legs ----------------------------------------------------------------------------------


async def _sizes(args: argparse.Namespace, work: Path, stack: ExitStack, notes: list[str]) -> dict[str, Any]:
    """One store and one gateway per (store kind, size), then every leg interleaved round by round:
    a size measured at a busier moment than another would otherwise read as a scaling effect."""
    backends = ["sqlite"] + ([] if args.no_scale_pg else ["pg"])
    sizes = sorted(args.scale_sizes)
    out: dict[str, Any] = {b: {} for b in backends}
    urls: dict[tuple[str, int], str] = {}
    legs: list[Leg] = []
    rng = random.Random(args.seed)
    async with AsyncExitStack() as astack:
        for backend in backends:
            for size in sizes:
                if backend == "sqlite":
                    url = f"sqlite:///{work / f'store-{size}' / 'gateway.db'}"
                else:
                    url, pg_notes = stack.enter_context(pgcluster.database(fsync=args.pg_fsync))
                    notes += [n for n in pg_notes if n not in notes]
                urls[(backend, size)] = url
                name = f"{backend}-{size}"
                manifests = write_manifest(work / f"manifests-{name}", ledger=work / f"{name}-ledger.jsonl")
                params = logged(gateway_stdio(manifests, url), work / f"gateway-{name}.log")
                gw = await astack.enter_async_context(Client(params, mode=args.mode, cache=None))
                template = new_key()
                await first_execution(gw, template)
                started = time.perf_counter()
                (bulk_sqlite if backend == "sqlite" else bulk_pg)(url, template, 0, size)
                loaded = time.perf_counter() - started
                out[backend][str(size)] = {"load_seconds": round(loaded, 1)}
                print(f"   {backend} store with {size:,} keys loaded in {loaded:.0f} s", flush=True)
                legs += [
                    Leg(
                        f"{backend}_claim_{size}",
                        lambda i, gw=gw: gw.call_tool("append", {"x": i, "idempotency_key": new_key()}),
                        "executed",
                    ),
                    Leg(
                        f"{backend}_replay_{size}",
                        lambda i, gw=gw, b=size: gw.call_tool(
                            "append", {"x": 0, "idempotency_key": scale_key(rng.randrange(b))}
                        ),
                        "replayed",
                    ),
                ]
        seq = await sequential(legs, n=args.scale_n, warmup=20, seed=args.seed)
    for (backend, size), url in urls.items():
        f = out[backend][str(size)]
        f["claim"] = seq[f"{backend}_claim_{size}"]
        f["replay"] = seq[f"{backend}_replay_{size}"]
        f["store_bytes"] = store_bytes(url)
    return out


async def _rss(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    manifests = write_manifest(work / "manifests-rss", ledger=work / "rss-ledger.jsonl")
    url = f"sqlite:///{work / 'rss-store' / 'gateway.db'}"
    run = new_key()
    async with AsyncExitStack() as stack:
        params = logged(gateway_stdio(manifests, url), work / "gateway-rss.log")
        gw = await stack.enter_async_context(Client(params, mode=args.mode, cache=None))
        pids = children_matching(str(manifests))
        gateway_pids = [
            p for p in pids if " -m gateway " in Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")
        ]
        if len(gateway_pids) != 1:
            raise RuntimeError(f"cannot tell the gateway's pid among {pids}")
        pid = gateway_pids[0]

        def call(i: int) -> Any:
            key = f"{run}-{i // 2:08d}"  # even: a new key; odd: the retry of the one before
            return gw.call_tool("append", {"x": i // 2, "idempotency_key": key})

        leg = Leg("rss", call)
        sink: list[float] = []
        done = 2_000
        await _burst(leg, done, 32, 0, sink)  # warm-up: imports, caches, pools
        series = [(0, round(rss_mb(pid), 1))]
        step = max(1, args.rss_calls // 10)
        started = time.perf_counter()
        while done < 2_000 + args.rss_calls:
            await _burst(leg, step, 32, done, sink)
            done += step
            series.append((done - 2_000, round(rss_mb(pid), 1)))
        elapsed = time.perf_counter() - started
    return {
        "calls": args.rss_calls,
        "calls_per_s": round(args.rss_calls / elapsed, 1),
        "failures": leg.failures,
        "first_failure": leg.first_failure,
        "series_mb": series,
        "start_mb": series[0][1],
        "end_mb": series[-1][1],
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"notes": [], "tables": {}, "targets": [], "sizes": {}}
    with ExitStack() as stack:
        started = time.perf_counter()
        out["sizes"] = await _sizes(args, work, stack, out["notes"])
        out["notes"].append(f"stored-keys legs (loading included) took {time.perf_counter() - started:.0f} s")
    lo, hi = str(min(args.scale_sizes)), str(max(args.scale_sizes))
    for backend, sizes in out["sizes"].items():
        rows = []
        for size, f in sizes.items():
            rows.append(
                f"{int(size):>9,} keys  claim p50 {f['claim'].get('p50_ms'):>6} ms  replay p50 "
                f"{f['replay'].get('p50_ms'):>6} ms  store {f['store_bytes'] / 1e6:>7.1f} MB"
            )
        keys = int(hi) - int(lo)
        per_1k = (sizes[hi]["store_bytes"] - sizes[lo]["store_bytes"]) / keys * 1000 / 1e6 if keys else None
        out.setdefault("mb_per_1k_keys", {})[backend] = round(per_1k, 3) if per_1k is not None else None
        rows.append(
            f"store size: {per_1k:.2f} MB per 1k keys (a record and its event each)" if per_1k else ""
        )
        out["tables"][f"{backend}: latency against stored keys"] = rows
        for leg in ("claim", "replay"):
            out["targets"].append(
                target(
                    f"{backend} {leg} p50 at {int(hi):,} keys <= 1.2x at {int(lo):,}",
                    ratio(sizes[hi][leg].get("p50_ms"), sizes[lo][leg].get("p50_ms")),
                    "<=",
                    1.2,
                    f"{leg} p50 @{hi} / @{lo}",
                )
            )

    if args.rss_calls:
        rss = await _rss(args, work)
        out["rss"] = rss
        out["tables"]["gateway RSS over calls (SQLite, 32 in flight)"] = [
            ", ".join(f"{n // 1000}k: {mb:.0f} MB" for n, mb in rss["series_mb"]),
            f"{rss['calls_per_s']} calls/s, {rss['failures']} failures",
        ]
        out["targets"].append(
            target(
                f"RSS after {args.rss_calls:,} calls <= 1.10x after warm-up",
                ratio(rss["end_mb"], rss["start_mb"]),
                "<=",
                1.10,
                "RSS end / RSS start",
            )
        )
    _plot(out, args)
    return out


def _plot(out: dict[str, Any], args: argparse.Namespace) -> None:
    if not PLOT_PYTHON.exists():
        out["notes"].append(f"no plot: {PLOT_PYTHON} is missing (bench/setup.sh makes it)")
        return
    data = args.json.parent / "scale-plot.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({"sizes": out["sizes"], "rss": out.get("rss")}))
    # The committed plot comes from full runs only; a trial run (--json elsewhere) plots beside its JSON.
    plot = PLOT if args.json.resolve() == DEFAULT_JSON.resolve() else args.json.with_suffix(".png")
    subprocess.run([str(PLOT_PYTHON), str(BENCH / "plot.py"), str(data), str(plot)], check=True)
    out["notes"].append(f"plot: {plot}")
