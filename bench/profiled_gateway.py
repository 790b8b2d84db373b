"""Run ``python -m gateway`` with instruments on its hot path (benchmark tooling only).

    python bench/profiled_gateway.py OUT_DIR serve --manifests ... --store ...

Nothing in the gateway changes: everything is wrapped from outside, at start-up, and every
wrap is skipped quietly when the name it wraps is gone (the gateway's code moves).

Measurement windows: ``SIGUSR1`` opens one, ``SIGUSR2`` closes it and writes
``OUT_DIR/window-N.json`` (and ``window-N.pstats`` when ``OUT_DIR/next-window`` said
``cprofile`` at the opening: a cProfile of the loop thread on its CPU clock).
``bench/hotpath.py`` drives this. A window records, for the event-loop thread:
- ``cpu_s``: its CPU time (``time.thread_time``), i.e. the loop's busy time (``process_cpu_s``:
  every thread's, worker threads included);
- ``loop_passes`` (calls of the selector's ``select``, one per pass of the asyncio loop) and
  ``idle_s`` (time spent inside them);
- ``checkpoints`` (anyio's ``checkpoint``/``checkpoint_if_cancelled``/``cancel_shielded_checkpoint``),
  ``stream_sends`` (anyio memory-object stream ``send_nowait``: one per hop between tasks),
  ``tasks`` (asyncio tasks created);
- ``probes``: wall-time percentiles of hot-path functions (``store.claim``, ``guard.run``, ...),
  each including every await inside it.

Without windows, ``OUT_DIR/probes.json`` is written at exit (every call since start), and
``IDEM_BENCH_CPROFILE=1`` profiles the loop thread from start to exit into ``loop.pstats``.
"""

from __future__ import annotations

import asyncio
import atexit
import cProfile
import functools
import inspect
import json
import os
import selectors
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The gateway of the checkout this file is in, as ``python -m gateway`` run from there would
# import it (sys.path[0] is this script's folder, which would leave an installed copy to win).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SAMPLES: dict[str, list[float]] = defaultdict(list)
COUNTS: Counter[str] = Counter()
IDLE = [0.0]


def _probe(owner: Any, attr: str, label: str) -> None:
    fn = getattr(owner, attr, None)
    if fn is None:
        return
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


def _count(owner: Any, attr: str, label: str) -> None:
    raw = inspect.getattr_static(owner, attr, None)
    if raw is None:
        return
    is_class = isinstance(raw, classmethod)
    fn = raw.__func__ if is_class else raw
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def counted_async(*args: Any, **kwargs: Any) -> Any:
            COUNTS[label] += 1
            return await fn(*args, **kwargs)

        wrapped: Any = counted_async
    else:

        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            COUNTS[label] += 1
            return fn(*args, **kwargs)

        wrapped = counted
    setattr(owner, attr, classmethod(wrapped) if is_class else wrapped)


def _instrument_loop() -> None:
    """Loop passes and idle time (the selector), checkpoints, stream hops, tasks."""
    for cls in {selectors.DefaultSelector, selectors.EpollSelector}:
        select = cls.select

        def timed_select(self: Any, timeout: float | None = None, _select: Any = select) -> Any:
            COUNTS["loop_passes"] += 1
            started = time.perf_counter()
            try:
                return _select(self, timeout)
            finally:
                IDLE[0] += time.perf_counter() - started

        cls.select = timed_select  # type: ignore[method-assign]
    try:
        from anyio._backends._asyncio import AsyncIOBackend
        from anyio.streams.memory import MemoryObjectSendStream
    except ImportError:
        return
    for name in ("checkpoint", "checkpoint_if_cancelled", "cancel_shielded_checkpoint"):
        _count(AsyncIOBackend, name, "checkpoints")
    _count(MemoryObjectSendStream, "send_nowait", "stream_sends")
    _count(asyncio.BaseEventLoop, "create_task", "tasks")


def _instrument_gateway() -> None:
    probes: list[tuple[str, str, str, str]] = [
        ("gateway.server.app", "Gateway", "call_tool", "handler.call_tool"),
        ("gateway.idempotency.guard", "Guard", "run", "guard.run"),
        ("gateway.idempotency.guard", "Guard", "_changed", "guard.listeners"),
        ("gateway.downstream.session", "DownstreamSession", "call_tool", "downstream.call_tool"),
        ("gateway.server.call_tool", "", "_check_arguments", "validate.jsonschema"),
        ("gateway.server.call_tool", "", "fingerprint", "fingerprint"),
        ("gateway.server.call_tool", "", "extract_key", "extract_key"),
        ("gateway.server.call_tool", "", "_clean", "clean_result"),
    ]
    for op in ("claim", "complete", "get", "append_events", "release", "mark_unknown"):
        probes.append(("gateway.store.sql", "SqlStore", op, f"store.{op}"))
        probes.append(("gateway.store.sql", "SqlStore", f"_{op}", f"store.{op}:sync"))
    import importlib

    for module_name, cls_name, attr, label in probes:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner = getattr(module, cls_name, None) if cls_name else module
        if owner is not None:
            _probe(owner, attr, label)
    if os.environ.get("IDEM_BENCH_INLINE_STORE"):  # an experiment: store calls on the loop thread
        try:
            from gateway.store import sql

            async def inline_call(self: Any, fn: Callable[..., Any], *args: Any) -> Any:
                return self._run(fn, *args)

            sql.SqlStore._call = inline_call  # type: ignore[method-assign]
        except (ImportError, AttributeError):
            pass


def summary() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, ms in sorted(SAMPLES.items()):
        if not ms:
            continue
        s = sorted(ms)
        out[label] = {
            "count": len(s),
            "p50_ms": round(statistics.median(s), 4),
            "p90_ms": round(s[int(0.9 * (len(s) - 1))], 4),
            "mean_ms": round(statistics.fmean(s), 4),
        }
    return out


class Windows:
    """SIGUSR1 opens a measurement window, SIGUSR2 closes it and writes its files."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.n = 0
        self.profiler: cProfile.Profile | None = None
        self.opened: dict[str, float] = {}

    def open(self, *_: Any) -> None:
        mode_file = self.out_dir / "next-window"
        mode = mode_file.read_text().strip() if mode_file.exists() else "counters"
        SAMPLES.clear()
        COUNTS.clear()
        IDLE[0] = 0.0
        self.opened = {"wall": time.perf_counter(), "cpu": time.thread_time(), "proc": time.process_time()}
        if mode == "cprofile":
            # CPU time, not wall time: a write that wakes the reader on a busy machine must not
            # count the time this thread sat descheduled.
            self.profiler = cProfile.Profile(time.thread_time)
            self.profiler.enable()

    def close(self, *_: Any) -> None:
        cpu = time.thread_time() - self.opened["cpu"]
        proc = time.process_time() - self.opened["proc"]
        wall = time.perf_counter() - self.opened["wall"]
        self.n += 1
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(str(self.out_dir / f"window-{self.n}.pstats"))
            self.profiler = None
        data = {
            "wall_s": wall,
            "cpu_s": cpu,
            "process_cpu_s": proc,
            "idle_s": IDLE[0],
            "counts": dict(COUNTS),
            "probes": summary(),
        }
        tmp = self.out_dir / f"window-{self.n}.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.rename(self.out_dir / f"window-{self.n}.json")


def main() -> int:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[2:]
    _instrument_loop()
    _instrument_gateway()
    windows = Windows(out_dir)
    signal.signal(signal.SIGUSR1, windows.open)
    signal.signal(signal.SIGUSR2, windows.close)
    profiler: cProfile.Profile | None = cProfile.Profile() if os.environ.get("IDEM_BENCH_CPROFILE") else None

    def dump() -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(out_dir / "loop.pstats"))
        if windows.n == 0:
            (out_dir / "probes.json").write_text(json.dumps(summary(), indent=2) + "\n")

    atexit.register(dump)
    from gateway.cli import main as gateway_main

    if profiler is not None:
        profiler.enable()
    return gateway_main(argv)


if __name__ == "__main__":
    sys.exit(main())
