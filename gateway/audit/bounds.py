"""Arguments as an audit event keeps them: bounded in size, whatever a client sent.

An event is written for every decision, refusals included, so a client that sends 3 MB
arguments to be refused would otherwise grow the store by 3 MB a call. Each argument value
whose JSON is longer than ``MAX_VALUE`` characters is cut to its first ``HEAD`` characters
and a marker saying how long it was and its SHA-256, so two events can still be told apart
(same hash, same value) and an operator can check a value they hold; an argument name longer
than ``MAX_NAME`` is cut the same way; past ``MAX_TOTAL`` characters in all, the remaining
arguments are folded into one marker.

Redaction comes first (``redact`` fields are already ``***`` when they get here): the hash is
only ever of a value the operator chose to keep.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.idempotency.keys import KEY_PATTERN
from gateway.textsafe import escape

__all__ = ["MAX_TOTAL", "MAX_VALUE", "TRUNCATED", "bound_arguments", "event_key"]

_KEY = re.compile(KEY_PATTERN)

MAX_VALUE = 1024
MAX_NAME = 128
MAX_TOTAL = 16 * 1024
HEAD = 128
TRUNCATED = "…[truncated"
MORE_KEY = "…"


def _json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        # An integer past Python's digit limit, or nesting past the recursion limit: what it
        # is, not what it says.
        return f"<unprintable {type(value).__name__}>"


def _marker(text: str, head: int) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:head]}{TRUNCATED} {len(text)} characters, sha256:{digest}]"


def _bound_value(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE else _marker(value, HEAD)
    text = _json(value)
    if text.startswith("<unprintable"):
        return text
    return value if len(text) <= MAX_VALUE else _marker(text, HEAD)


def bound_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` with every oversized name and value cut (see the module docstring)."""
    out: dict[str, Any] = {}
    total = 2
    items = list(arguments.items())
    for index, (name, value) in enumerate(items):
        key = name if len(name) <= MAX_NAME else _marker(name, HEAD // 2)
        bounded = _bound_value(value)
        size = len(_json(key)) + len(_json(bounded)) + 2
        if total + size > MAX_TOTAL:
            rest = dict(items[index:])
            out[MORE_KEY] = _marker(_json(rest), 0).replace(
                TRUNCATED, f"{TRUNCATED} {len(rest)} more argument(s):", 1
            )
            break
        out[key] = bounded
        total += size
    return out


def event_key(value: Any) -> tuple[str | None, str | None]:
    """A refused call's key as its event keeps it: ``(key, None)`` for a well-formed key;
    ``(None, preview)`` for a malformed one, whose preview is escaped and short (never a NUL or
    an escape sequence in a column that a database refuses or a terminal interprets)."""
    if isinstance(value, str) and _KEY.fullmatch(value):
        return value, None
    if isinstance(value, str):
        return None, escape(value[:64]) + ("…" if len(value) > 64 else "")
    return None, None
