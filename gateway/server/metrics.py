"""Per-process call counters and a latency histogram, rendered in the Prometheus text format.

Each replica counts only its own calls; Prometheus sums replicas. The audit trail in the store
is the durable, cross-replica record (``audit://stats``); these are for dashboards and alerts.
No prometheus_client: three metric families do not justify a dependency.

Exposed families (``idem_gateway_`` prefix):
- ``calls_total{tool, outcome}``: every tools/call that reached a known tool. ``outcome`` is
  ``executed`` or ``replayed``, a refusal's error code (``idempotency_key_conflict``, ...),
  ``read_only`` for a pass-through read-only call, or ``error`` for a read-only tool error.
- ``duplicates_prevented_total``: replays, as in ``audit://stats``.
- ``call_duration_seconds{tool, outcome}``: a histogram of the gateway-side latency.
- ``waiting``: a gauge of concurrent duplicates parked until their key's first call ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway import meta

REPLAYED = "replayed"
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def now() -> float:
    """A monotonic clock for durations (wall-clock jumps must not produce negative latencies)."""
    return time.perf_counter()


def outcome_of(result: Mapping[str, Any]) -> str:
    """The label a result is counted under, read from what the gateway stamped on it."""
    stamped = meta.outcome_of(result.get("_meta"))
    if stamped is not None:
        return stamped
    return "error" if result.get("isError") else "read_only"


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: int = 0
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += seconds


@dataclass
class CallMetrics:
    """Counters updated once per call on the event loop (no locking needed)."""

    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[tuple[str, str], _Histogram] = field(default_factory=dict)

    def observe(self, tool: str, result: Mapping[str, Any], started: float) -> None:
        """Count one finished call; ``started`` is the ``now()`` taken before it."""
        key = (tool, outcome_of(result))
        self.calls[key] = self.calls.get(key, 0) + 1
        self.latency.setdefault(key, _Histogram()).observe(max(0.0, now() - started))

    @property
    def duplicates_prevented(self) -> int:
        return sum(n for (_, outcome), n in self.calls.items() if outcome == REPLAYED)

    def render(self, *, waiting: int = 0) -> str:
        """The exposition text (format 0.0.4), families in a stable order; ``waiting`` is the
        guard's count of parked duplicates (read at scrape time, so the call path pays nothing)."""
        lines = [
            "# HELP idem_gateway_calls_total Tool calls by exposed tool and outcome.",
            "# TYPE idem_gateway_calls_total counter",
        ]
        for (tool, outcome), n in sorted(self.calls.items()):
            lines.append(f"idem_gateway_calls_total{_labels(tool=tool, outcome=outcome)} {n}")
        lines += [
            "# HELP idem_gateway_duplicates_prevented_total Retries answered from the store "
            "instead of running again.",
            "# TYPE idem_gateway_duplicates_prevented_total counter",
            f"idem_gateway_duplicates_prevented_total {self.duplicates_prevented}",
            "# HELP idem_gateway_call_duration_seconds Gateway-side latency of tool calls.",
            "# TYPE idem_gateway_call_duration_seconds histogram",
        ]
        for (tool, outcome), h in sorted(self.latency.items()):
            name = "idem_gateway_call_duration_seconds"
            for bound, count in zip(BUCKETS, h.counts, strict=True):
                le = _format_float(bound)
                lines.append(f"{name}_bucket{_labels(tool=tool, outcome=outcome, le=le)} {count}")
            lines.append(f"{name}_bucket{_labels(tool=tool, outcome=outcome, le='+Inf')} {h.total}")
            lines.append(f"{name}_sum{_labels(tool=tool, outcome=outcome)} {_format_float(h.sum)}")
            lines.append(f"{name}_count{_labels(tool=tool, outcome=outcome)} {h.total}")
        lines += [
            "# HELP idem_gateway_waiting Concurrent duplicates waiting for their key's first call.",
            "# TYPE idem_gateway_waiting gauge",
            f"idem_gateway_waiting {waiting}",
        ]
        return "\n".join(lines) + "\n"


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    """Label values escape backslash, double quote and newline, per the text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_float(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
