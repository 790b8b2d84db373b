"""The audit resources' URIs: what ``resources`` serves and ``subscriptions`` announces."""

from __future__ import annotations

from typing import Final

SCHEME: Final = "audit://"
EVENTS_URI: Final = SCHEME + "events"
STATS_URI: Final = SCHEME + "stats"
KEYS_PREFIX: Final = SCHEME + "keys/"
TOOLS_PREFIX: Final = SCHEME + "tools/"


def key_uri(key: str) -> str:
    """The resource of one key's record and events."""
    return KEYS_PREFIX + key
