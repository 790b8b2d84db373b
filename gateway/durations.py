"""Durations as manifests and the command line write them: an integer and a unit.

Its own module so that the command line reads one without loading the manifest loader (and
its JSON Schema validator).
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The longest duration anything takes: ten years. Beyond it, date arithmetic (now + retention)
# would overflow, and no policy needs it.
MAX_DURATION_DAYS = 3650
MAX_DURATION = MAX_DURATION_DAYS * 86400.0


def parse_duration(text: str) -> float:
    """`"30s"` → 30.0. An integer and a unit (ms s m h d), nothing fancier: one reading everywhere."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {text!r}: expected an integer and a unit (ms, s, m, h, d)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
