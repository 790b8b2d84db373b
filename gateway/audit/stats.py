"""Counts for one principal (or all): by outcome, by tool, duplicates and spend prevented.

A duplicate prevented is a ``replayed`` event: a retry that got the stored result, or a
concurrent duplicate that waited for the first call (the guard records that as a replay too).
Its ``cost`` is the manifest's ``cost`` of the tool, so the spend prevented is their sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from gateway.store.base import Store

WINDOWS: dict[str, timedelta] = {
    "last_hour": timedelta(hours=1),
    "last_day": timedelta(days=1),
    "last_week": timedelta(days=7),
}
PREVENTED = "replayed"


def summarize(rows: Iterable[tuple[str, str, int, float]]) -> dict[str, Any]:
    """Fold ``Store.outcome_counts`` rows into the stats shape (without ``unknown_open``)."""
    by_outcome: dict[str, int] = {}
    by_tool: dict[str, dict[str, int]] = {}
    duplicates = 0
    spend = 0.0
    for tool, outcome, count, cost in rows:
        by_outcome[outcome] = by_outcome.get(outcome, 0) + count
        per_tool = by_tool.setdefault(tool, {})
        per_tool[outcome] = per_tool.get(outcome, 0) + count
        if outcome == PREVENTED:
            duplicates += count
            spend += cost
    return {
        "by_outcome": dict(sorted(by_outcome.items())),
        "by_tool": {t: dict(sorted(o.items())) for t, o in sorted(by_tool.items())},
        "duplicates_prevented": duplicates,
        # Sums of decimal prices drift in binary floating point; cents to micro-units is plenty.
        "spend_prevented": round(spend, 6),
    }


async def compute_stats(store: Store, principal: str | None, *, now: datetime) -> dict[str, Any]:
    """All-time counts, the open unknowns, and the same counts for each window ending ``now``."""
    stats = summarize(await store.outcome_counts(principal, None))
    stats["unknown_open"] = await store.count_unknown(principal)
    for name, span in WINDOWS.items():
        stats[name] = summarize(await store.outcome_counts(principal, now - span))
    return stats
