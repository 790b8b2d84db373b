"""Run ``python -m gateway`` with timing probes on its hot path (benchmark tooling only).

    python bench/profiled_gateway.py OUT_DIR serve --manifests ... --store ...

``bench/bench.py`` starts the gateway through this when ``IDEM_BENCH_PROFILE=OUT_DIR`` is set.
Nothing in the gateway changes: the probes wrap its functions from outside, at start-up.

- ``OUT_DIR/probes.json``: per probe, count and wall-time percentiles (ms). Async probes include
  every await inside them (a store call includes its hop to the worker thread and back);
  ``store.<op>`` versus ``store.<op>:thread`` is that hop plus the wait for a free worker.
- ``OUT_DIR/loop.pstats`` (if ``IDEM_BENCH_CPROFILE=1``): cProfile of the event-loop thread.
- ``IDEM_BENCH_INLINE_STORE=1``: an experiment, not a mode: store calls run on the event-loop
  thread instead of a worker thread, to measure what the thread hop costs end to end.
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import inspect
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

SAMPLES: dict[str, list[float]] = defaultdict(list)


def _probe(owner: Any, attr: str, label: str) -> None:
    fn = getattr(owner, attr)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                SAMPLES[label].append((time.perf_counter() - started) * 1000)

        setattr(owner, attr, timed_async)
    else:

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                SAMPLES[label].append((time.perf_counter() - started) * 1000)

        setattr(owner, attr, timed)


def install() -> None:
    from gateway.downstream import session
    from gateway.idempotency import guard
    from gateway.server import app, call_tool
    from gateway.store import sql

    probes: list[tuple[Any, str, str]] = [
        (app.Gateway, "call_tool", "handler.call_tool"),
        (guard.Guard, "run", "guard.run"),
        (guard.Guard, "_changed", "guard.listeners"),
        (session.DownstreamSession, "call_tool", "downstream.call_tool"),
        (call_tool, "_check_arguments", "validate.jsonschema"),
        (call_tool, "fingerprint", "fingerprint"),
        (call_tool, "extract_key", "extract_key"),
        (call_tool, "_clean", "clean_result"),
        (sql.SqlStore, "claim", "store.claim"),
        (sql.SqlStore, "_claim", "store.claim:thread"),
        (sql.SqlStore, "complete", "store.complete"),
        (sql.SqlStore, "_complete", "store.complete:thread"),
        (sql.SqlStore, "get", "store.get"),
        (sql.SqlStore, "append_event", "store.append_event"),
    ]
    if hasattr(sql.SqlStore, "_append_event"):
        probes.append((sql.SqlStore, "_append_event", "store.append_event:thread"))
    if os.environ.get("IDEM_BENCH_INLINE_STORE"):

        async def inline_call(self: Any, fn: Callable[..., Any], *args: Any) -> Any:
            return self._run(fn, *args)

        sql.SqlStore._call = inline_call  # type: ignore[method-assign]
    for owner, attr, label in probes:
        if hasattr(owner, attr):
            _probe(owner, attr, label)


def summary() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, ms in sorted(SAMPLES.items()):
        s = sorted(ms)
        out[label] = {
            "count": len(s),
            "p50_ms": round(statistics.median(s), 4),
            "p90_ms": round(s[int(0.9 * (len(s) - 1))], 4),
            "mean_ms": round(statistics.fmean(s), 4),
        }
    return out


def main() -> int:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[2:]
    install()
    profiler: cProfile.Profile | None = cProfile.Profile() if os.environ.get("IDEM_BENCH_CPROFILE") else None

    def dump() -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(out_dir / "loop.pstats"))
        (out_dir / "probes.json").write_text(json.dumps(summary(), indent=2) + "\n")

    atexit.register(dump)
    from gateway.cli import main as gateway_main

    run: Callable[[], int] = functools.partial(gateway_main, argv)
    if profiler is not None:
        profiler.enable()
    return run()


if __name__ == "__main__":
    sys.exit(main())
