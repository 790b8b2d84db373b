"""Text that came from someone else, made safe to print on an operator's terminal.

A key, a tool name or a downstream's error text can carry control characters: ANSI escape
sequences that clear the screen or set the window title, a carriage return or newline that
forges a table row, a bidi override that shows ``gpj.exe`` as ``exe.jpg``. ``escape`` turns
every such character into a visible ``\\xNN`` / ``\\uNNNN`` escape (the way ``repr`` shows
it), so what a person reads is exactly what was sent. JSON output needs none of this: the
encoder already escapes control characters.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["escape", "is_safe"]

# Categories no terminal should interpret from foreign text: controls (C0, DEL, C1), format
# characters (bidi embeddings, overrides and isolates, zero-width joiners, BOM), line and
# paragraph separators, and unassigned or private code points (unknown glyphs, unknown effects).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ASCII_SAFE = re.compile(r"[ -~]*")  # the common case: printable ASCII, nothing to do


@lru_cache(maxsize=4096)
def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escaped(char: str) -> str:
    point = ord(char)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def escape(text: str) -> str:
    """``text`` with every control, format and separator character shown as an escape."""
    if _ASCII_SAFE.fullmatch(text):
        return text
    return "".join(_escaped(c) if _unsafe(c) else c for c in text)


def is_safe(text: str) -> bool:
    """Whether ``escape`` would leave ``text`` unchanged."""
    return escape(text) == text


def table(rows: list[list[str]]) -> str:
    """Aligned columns for people; every cell escaped, so no cell can break its row."""
    rows = [[escape(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
