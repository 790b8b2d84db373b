"""Stateless model checking of the claim protocol: every schedule of a bounded configuration.

Depth-first over the actions a run offers (``World.actions``), replaying a choice prefix to
reach each branch (coroutines cannot be copied), and memoising on the run's exact state
(``World.key``) so that a state reached by two interleavings is explored once. Each run is
checked step by step (``invariants.Monitor``) and at its end (every coroutine finished, every
held result written).

    python -m tests.model.explorer            the CI bounds, one line per configuration
    python -m tests.model.explorer --big      bigger bounds (also: IDEM_MODEL_BIG=1 for pytest)
    python -m tests.model.explorer NAME ...   only these configurations
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.model.configs import configs
from tests.model.invariants import Violation
from tests.model.world import Config, Footprint, World, harness_patches, patched

Action = tuple[str, ...]


@dataclass
class Report:
    config: Config
    states: int = 0
    transitions: int = 0
    runs: int = 0  # replays started (one per branch taken)
    schedules: int = 0  # runs that reached their end (the others met a state already explored)
    steps: int = 0
    depth: int = 0
    stale_sends: int = 0  # sends made after their incarnation ended (see strict_fencing)
    seconds: float = 0.0
    violations: dict[str, Violation] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # what happened in some run (answers, transitions)

    def line(self) -> str:
        found = ", ".join(sorted(self.violations)) or "no violation"
        return (
            f"{self.config.name}: {self.states} states, {self.transitions} transitions, "
            f"{self.schedules} complete schedules, {self.runs} runs, {self.steps} steps, depth {self.depth}, "
            f"{self.seconds:.1f}s: {found}"
        )


@dataclass
class _Branch:
    """An action still to take from a state met earlier: replay ``path`` to reach ``state``."""

    path: list[Action]
    state: Hashable
    sleep: dict[Action, Footprint]  # the state's sleep set when the branch was made
    earlier: list[Action]  # the state's actions explored before this one
    action: Action


async def _explore(config: Config, stop_on: Iterable[str], por: bool) -> Report:
    """Depth-first search with state caching and sleep sets (Godefroid): an action that
    commutes with the one just taken, and whose outcome from here was already explored, sleeps
    (is not taken again) until something it depends on happens. Sleep sets skip transitions,
    never states: every reachable state is still visited (``test_sleep_sets_visit_every_state``)."""
    report = Report(config)
    stop = set(stop_on)
    visited: dict[Hashable, dict[Action, Footprint]] = {}  # state → its sleep set
    footprints: dict[tuple[Hashable, Action], Footprint] = {}
    branches: list[_Branch | None] = [None]
    while branches:
        branch = branches.pop()
        report.runs += 1
        world = World(config)
        await world.start()
        try:
            sleep: dict[Action, Footprint] = {}
            if branch is not None:
                for action in branch.path:
                    await world.do(action)
                report.steps += len(branch.path)
                if world.key() != branch.state:
                    raise RuntimeError("a replay diverged: the run is not deterministic")
                taken = await world.do(branch.action)
                report.steps += 1
                footprints[(branch.state, branch.action)] = taken
                if por:
                    before = [(a, footprints[(branch.state, a)]) for a in branch.earlier]
                    sleep = {a: f for a, f in [*branch.sleep.items(), *before] if f.independent(taken)}
            while not world.monitor.violations:
                state = world.key()
                actions = world.actions()
                known = visited.get(state)
                if known is None:
                    visited[state] = sleep
                    if not actions:
                        _end(world)
                        report.schedules += 1
                        break
                    todo = [a for a in actions if a not in sleep]
                else:  # met again: take only what slept then and is awake now
                    todo = [a for a in actions if a in known and a not in sleep]
                    visited[state] = {a: f for a, f in known.items() if a in sleep}
                if not todo:
                    break
                if len(world.path) >= config.max_depth:
                    world.monitor.violation(
                        "livelock", f"the run is still going after {config.max_depth} steps"
                    )
                    break
                path = list(world.path)
                for i in range(len(todo) - 1, 0, -1):
                    branches.append(_Branch(path, state, sleep, todo[:i], todo[i]))
                taken = await world.do(todo[0])
                report.steps += 1
                footprints[(state, todo[0])] = taken
                if por:
                    sleep = {a: f for a, f in sleep.items() if f.independent(taken)}
            report.depth = max(report.depth, len(world.path))
            report.stale_sends += world.monitor.stale_sends
            report.seen |= world.monitor.seen
            for v in world.monitor.violations:
                report.violations.setdefault(v.kind, v)
        finally:
            await world.close()
        if stop & set(report.violations):
            break
    report.states = len(visited)
    report.transitions = len(footprints)
    return report


def _end(world: World) -> None:
    world.note("the run ends")
    stuck = [a.name for a in world.actors if a.status == "running" and not a.daemon]
    if stuck:
        world.monitor.violation("terminates", f"the run ends with {', '.join(stuck)} stuck")
    world.monitor.final()


def explore(
    config: Config,
    *,
    patches: Iterable[tuple[Any, str, Any]] = (),
    stop_on: Iterable[str] = (),
    por: bool = True,
) -> Report:
    """Every schedule of ``config``; ``patches`` swap in a broken piece (a seam for the tests
    that prove the checker catches bugs); ``stop_on``: stop at the first violation of a kind."""
    started = time.perf_counter()
    patches = list(patches)
    with _quiet(patches):
        report = asyncio.run(_explore(config, stop_on, por))
    for kind, found in report.violations.items():
        report.violations[kind] = shrink(config, found, patches)
    report.seconds = time.perf_counter() - started
    return report


def replay(
    config: Config, path: Iterable[Action], *, patches: Iterable[tuple[Any, str, Any]] = ()
) -> tuple[list[Violation], list[str]]:
    """Run one schedule (a counterexample's ``path``): its violations and its trace. The run
    stops early where the code no longer offers the schedule's next action (other code)."""

    async def run() -> tuple[list[Violation], list[str]]:
        world = World(config)
        await world.start()
        try:
            for action in path:
                if action not in world.actions():
                    break
                await world.do(action)
            else:
                if not world.monitor.violations and not world.actions():
                    _end(world)
            return world.monitor.violations, world.lines()
        finally:
            await world.close()

    with _quiet(patches):
        return asyncio.run(run())


@contextlib.contextmanager
def _quiet(patches: Iterable[tuple[Any, str, Any]]) -> Iterator[None]:
    """The harness's seams and the test's patches in place, the guard's expected warnings (by
    the thousand) and the operator's messages silenced."""
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with patched(*harness_patches(), *patches), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def shrink(config: Config, found: Violation, patches: Iterable[tuple[Any, str, Any]] = ()) -> Violation:
    """A shorter schedule with the same kind of violation: drop one action at a time while the
    violation still happens (the first schedule the search meets carries detours)."""
    patches = list(patches)
    path = list(found.path)
    best = found
    i = 0
    while i < len(path):
        shorter = path[:i] + path[i + 1 :]
        violations, _ = replay(config, shorter, patches=patches)
        same = [v for v in violations if v.kind == found.kind]
        if same and len(same[0].path) <= len(shorter):
            path = same[0].path
            best = same[0]
        else:
            i += 1
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*")
    parser.add_argument("--big", action="store_true", help="add the bigger configurations")
    args = parser.parse_args(argv)
    big = args.big or bool(os.environ.get("IDEM_MODEL_BIG"))
    chosen = [c for c in configs(big) if not args.names or c.name in args.names]
    status = 0
    for config in chosen:
        report = explore(config)
        print(report.line(), flush=True)
        for v in report.violations.values():
            print(v.report())
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
