"""The audit trail as MCP resources, the agent policy as an MCP prompt.

Every read is scoped to the caller's principal by the store query itself (never filtered
after the fact), so another principal's key is simply not found: it reads exactly like a
key never used, byte for byte. Bodies are bounded: the newest ``LIMIT`` events. A key or
tool that no call could have stored (a NUL, a character outside the key alphabet, too long)
reads the same way, without a query: a database must never see it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.audit.redaction import install_secret_filter
from gateway.audit.stats import compute_stats
from gateway.audit.subscriptions import Subscriptions
from gateway.audit.uris import EVENTS_URI, KEYS_PREFIX, SCHEME, STATS_URI, TOOLS_PREFIX
from gateway.audit.views import dumps, event_view, record_view
from gateway.store.base import Store
from gateway.store.records import EventQuery

if TYPE_CHECKING:
    from gateway.server.app import Gateway

logger = logging.getLogger(__name__)

MIME = "application/json"
LIMIT = 100
POLICY_PROMPT = "idempotency-policy"
_STORABLE_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,255}")  # every key any call can have stored
_MAX_NAME = 255  # the store's column width for tool names

POLICY_TEXT = """\
How to call side-effecting tools through idem-gateway:

1. One key per logical intent. Before an action (create this invoice, send this e-mail), mint
   a fresh idempotency_key (a UUID) for it and remember it together with the action.
2. The same key for every retry of that action: after a timeout, a dropped connection or an
   idempotency_key_in_progress refusal, call again with exactly the same arguments and the
   same key. You get the first call's result (outcome "replayed"), never a second effect.
3. Never one key for two payloads. A key used for other arguments is refused with
   idempotency_key_conflict; a different action needs a new key.
4. After outcome_unknown, do not mint a new key: the action may have happened. Read
   audit://keys/{key} to see the record and its events, tell the user, and let an operator
   resolve the key. Only a key that is released (resolved as failed) may be retried.
5. Before retrying anything you are unsure about, audit://keys/{key} answers whether the call
   happened, when, and what it returned.
6. Some tools ask the user to approve each new action. approval_declined means the user said
   no: do not retry it, and never mint a new key to ask again unless the user asks for it.
   approval_unavailable means nobody answered: nothing ran, and a retry with the same key asks again.
"""


class AuditResources:
    """A ``ResourceProvider`` over the store: events, stats, one key, one tool."""

    def __init__(self, store: Store, clock: Callable[[], datetime], *, limit: int = LIMIT) -> None:
        self.store = store
        self.clock = clock
        self.limit = limit

    def resources(self) -> list[dict[str, Any]]:
        return [
            {
                "uri": EVENTS_URI,
                "name": "audit-events",
                "title": "Audit events",
                "description": f"Your latest {self.limit} idempotency decisions, newest first.",
                "mimeType": MIME,
            },
            {
                "uri": STATS_URI,
                "name": "audit-stats",
                "title": "Audit stats",
                "description": "Counts by outcome and tool, duplicates and spend prevented, open unknowns.",
                "mimeType": MIME,
            },
        ]

    def templates(self) -> list[dict[str, Any]]:
        return [
            {
                "uriTemplate": KEYS_PREFIX + "{key}",
                "name": "audit-key",
                "title": "One idempotency key",
                "description": (
                    "A key's record (state, first_executed_at, expires_at, result) and its events: "
                    "read it after outcome_unknown instead of minting a new key. Subscribable."
                ),
                "mimeType": MIME,
            },
            {
                "uriTemplate": TOOLS_PREFIX + "{tool}",
                "name": "audit-tool",
                "title": "One tool's audit events",
                "description": f"The latest {self.limit} events for one tool, newest first.",
                "mimeType": MIME,
            },
        ]

    def handles(self, uri: str) -> bool:
        return uri.startswith(SCHEME)

    async def read(self, principal: str, uri: str) -> dict[str, Any]:
        body = await self.body(principal, uri)
        return {
            "resultType": "complete",
            "contents": [{"uri": uri, "mimeType": MIME, "text": dumps(body)}],
        }

    async def body(self, principal: str, uri: str) -> dict[str, Any]:
        """The JSON body for ``uri`` as ``principal`` sees it."""
        if uri == EVENTS_URI:
            return {"events": await self._events(EventQuery(principal=principal, limit=self.limit))}
        if uri == STATS_URI:
            return await compute_stats(self.store, principal, now=self.clock())
        if uri.startswith(KEYS_PREFIX) and len(uri) > len(KEYS_PREFIX):
            key = unquote(uri[len(KEYS_PREFIX) :])
            if not _STORABLE_KEY.fullmatch(key):
                return {"record": None, "events": []}  # exactly what an unused key reads as
            record = await self.store.get(principal, key)
            events = await self._events(EventQuery(principal=principal, key=key, limit=self.limit))
            return {"record": record_view(record), "events": events}
        if uri.startswith(TOOLS_PREFIX) and len(uri) > len(TOOLS_PREFIX):
            tool = unquote(uri[len(TOOLS_PREFIX) :])
            if "\x00" in tool or len(tool) > _MAX_NAME:
                return {"events": []}
            query = EventQuery(principal=principal, tool=tool, limit=self.limit)
            return {"events": await self._events(query)}
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {uri}")

    async def _events(self, query: EventQuery) -> list[dict[str, Any]]:
        return [event_view(e) for e in await self.store.events(query)]


def policy_prompt() -> dict[str, Any]:
    return {
        "name": POLICY_PROMPT,
        "title": "Idempotency policy",
        "description": "How to use idempotency keys so that retries never repeat a side effect.",
        "arguments": [],
    }


def render_policy(arguments: dict[str, str]) -> dict[str, Any]:
    """The policy as one user message; it takes no arguments."""
    return {
        "resultType": "complete",
        "description": "The agent policy for idempotency keys.",
        "messages": [{"role": "user", "content": {"type": "text", "text": POLICY_TEXT}}],
    }


def install(gateway: Gateway) -> None:
    """Serve time: resources, the prompt, subscriptions fed by the guard, and the secret filter."""
    gateway.providers.append(AuditResources(gateway.store, gateway.clock))
    gateway.prompts[POLICY_PROMPT] = (policy_prompt(), render_policy)
    subscriptions = Subscriptions(gateway.principal_of)
    gateway.guard.listeners.append(subscriptions.record_changed)
    gateway.subscription_handlers.update(subscriptions.handlers())
    gateway.subscriptions = subscriptions  # downstream resources/updated and list_changed go out through it
    install_secret_filter(s for spec in gateway.specs for s in spec.secrets)
