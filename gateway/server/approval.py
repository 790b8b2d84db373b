"""A person's approval before a key first runs (``approve`` in a manifest), asked by MCP elicitation.

``needed`` says, purely, whether a call's arguments ask for approval. ``Approvals.confirm`` runs
inside the keyed execution (the guard holds the key's claim, so exactly one caller asks, and its
lease is renewed while the person thinks) before anything is sent downstream:

    approved (or approved before, for this key and payload)  → returns: the call runs, once
    declined (the user said no)                              → ``Refused``: the key is settled with
                                                               the ``approval_declined`` refusal, which
                                                               every retry gets until retention ends
    cancelled, no elicitation, no answer in time, an error   → ``ApprovalUnavailable``: released

The question goes to the client whose call it is (``relay.current_caller``): a 2025-era client
on its request's own stream, a 2026-07-28 client in an ``input_required`` round
(``gateway/server/exchange.py``). An approval is recorded as an ``approved`` event of the key,
and it stands until the key completes: a key released after approval (the downstream could not be
reached, a multi-round call's next round) is not asked about again. A forwarded key's re-send never
asks: that call was sent before.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway import meta
from gateway.downstream.relay import ELICITATION, current_caller
from gateway.errors import ApprovalDeclined, ApprovalUnavailable, StoreUnavailable
from gateway.idempotency.guard import Attempt, Intent, Refused
from gateway.manifests.models import Approve, Condition
from gateway.outcomes import Outcome
from gateway.server.errors import refusal_result
from gateway.store.base import Store
from gateway.store.records import Event, EventQuery

logger = logging.getLogger(__name__)

FIELD: Final = "approve"
SHOWN_CHARS: Final = 200  # an argument's value in the question, at most
HISTORY: Final = 50  # a key's newest events read for a standing approval

REQUESTED_SCHEMA: Final = {
    "type": "object",
    "properties": {
        FIELD: {
            "type": "boolean",
            "title": "Approve",
            "description": "Run this action once",
            "default": False,
        }
    },
    "required": [FIELD],
}

_UNAVAILABLE: Final = {
    "no_elicitation": "this client cannot ask its user (it does not offer MCP elicitation)",
    "cancelled": "the user dismissed the approval question without answering it",
    "timeout": "nobody answered the approval question in time",
    "client_error": "the client could not ask its user (it answered the question with an error)",
    "unreadable": "the answer to the approval question could not be read",
}


# ---- the policy, pure -----------------------------------------------------------------------


def needed(approve: Approve, arguments: Mapping[str, Any]) -> bool:
    """Whether a call with ``arguments`` needs approval under ``approve``."""
    if isinstance(approve, bool):
        return approve
    return any(holds(condition, arguments) for condition in approve)


def holds(condition: Condition, arguments: Mapping[str, Any]) -> bool:
    """One condition. An absent argument meets none; a value that cannot be compared with a
    number (a string, null) meets ``above``/``at_least``: asking is the safe side."""
    if condition.argument not in arguments:
        return False
    value = arguments[condition.argument]
    if condition.op in ("above", "at_least"):
        if not _number(value):
            return True
        return bool(value > condition.value if condition.op == "above" else value >= condition.value)
    if condition.op == "equals":
        return _same(value, condition.value)
    return any(_same(value, option) for option in condition.value)


def describe(approve: Approve) -> str:
    """The policy in a few words, for ``check``: ``-``, ``always``, ``amount > 100 | ...``."""
    if approve is False:
        return "-"
    if approve is True:
        return "always"
    symbols = {"above": ">", "at_least": ">=", "equals": "=="}
    return " | ".join(
        f"{c.argument} in {json.dumps(c.value)}"
        if c.op == "in"
        else f"{c.argument} {symbols[c.op]} {json.dumps(c.value)}"
        for c in approve
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value is expected
    if _number(value) and _number(expected):
        return bool(value == expected)
    return type(value) is type(expected) and bool(value == expected)


# ---- asking ---------------------------------------------------------------------------------


class Approvals:
    """Asks the caller's user before a key's first execution, and remembers approvals."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    async def confirm(self, intent: Intent, attempt: Attempt) -> None:
        """Return when the call may run; raise ``Refused`` or ``ApprovalUnavailable`` (see above)."""
        if attempt.resent or await self._standing(intent):
            return
        caller = current_caller()
        question = _question(intent)
        if caller is None or not caller.can(ELICITATION, question):
            raise _unavailable("no_elicitation")
        asked_at = self.clock()
        answer: dict[str, Any] | None = None
        with anyio.move_on_after(intent.policy.approval_timeout):
            try:
                answer = await caller.ask(ELICITATION, question)
            except MCPError as exc:
                if exc.error.code == types.METHOD_NOT_FOUND:
                    raise _unavailable("no_elicitation") from None
                reason = "timeout" if exc.error.code == types.REQUEST_TIMEOUT else "client_error"
                raise _unavailable(reason) from None
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise _unavailable("client_error") from None
        if answer is None:
            raise _unavailable("timeout")
        decided_at = self.clock()
        decision = {
            "decided_by": intent.principal,
            "asked_at": meta.iso(asked_at),
            "decided_at": meta.iso(decided_at),
            "waited_ms": round((decided_at - asked_at).total_seconds() * 1000, 3),
        }
        verdict = _verdict(answer)
        if verdict is True:
            await self._record(intent, decided_at, decision)
            return
        if verdict is False:
            declined = ApprovalDeclined(
                f'A person declined this action (tool "{intent.tool}") when asked to approve it, so it '
                "did not run. Every retry with this idempotency key gets this same answer: do not retry "
                "it. If the user wants it after all, it is a new request, with a new key.",
                decided_at=decision["decided_at"],
            )
            answered = {"answer": str(answer.get("action"))}
            raise Refused(refusal_result(declined), Outcome.APPROVAL_DECLINED, {**decision, **answered})
        raise _unavailable("cancelled" if answer.get("action") == "cancel" else "unreadable")

    async def _standing(self, intent: Intent) -> bool:
        """Whether this key and payload were approved and the key has not completed since."""
        query = EventQuery(principal=intent.principal, key=intent.key, limit=HISTORY)
        try:
            events = await self.store.events(query)
        except StoreUnavailable as exc:  # then ask: the safe side
            logger.warning("could not read a key's earlier approval: %s", exc)
            return False
        for event in events:  # newest first
            if event.outcome == Outcome.APPROVED:
                return event.fingerprint == intent.fingerprint
            if _closes(event):
                return False
        return False

    async def _record(self, intent: Intent, at: datetime, decision: dict[str, Any]) -> None:
        event = Event(
            at=at,
            principal=intent.principal,
            key=intent.key,
            server=intent.server,
            tool=intent.tool,
            outcome=Outcome.APPROVED.value,
            fingerprint=intent.fingerprint,
            arguments=intent.arguments,
            detail=decision,
        )
        try:
            await self.store.append_event(event)
        except StoreUnavailable as exc:  # the claim is held: the call runs, the trail lacks a line
            logger.error("could not record an approval: %s", exc)


def _closes(event: Event) -> bool:
    """An event after which an earlier approval no longer stands: the key completed (a stored
    result), was declined, or was settled by an operator."""
    if event.outcome == Outcome.EXECUTED:
        return event.detail.get("stored") is not False
    return event.outcome in (Outcome.APPROVAL_DECLINED, Outcome.RESOLVED)


def _verdict(answer: Mapping[str, Any]) -> bool | None:
    """True: approved; False: the user said no; None: no decision (cancelled, unreadable)."""
    action = answer.get("action")
    if action == "decline":
        return False
    if action != "accept":
        return None
    content = answer.get("content")
    choice = content.get(FIELD) if isinstance(content, Mapping) else None
    return choice if isinstance(choice, bool) else None


def _question(intent: Intent) -> dict[str, Any]:
    """The form: what would run (tool, server, arguments with ``redact`` applied) and one boolean."""
    lines = [f'An agent asks to run the tool "{intent.tool}" on the server "{intent.server}" with:']
    for name, value in sorted(intent.arguments.items()):
        shown = "*** (hidden)" if name in intent.policy.redact else _shown(value)
        lines.append(f"  {name}: {shown}")
    if not intent.arguments:
        lines.append("  (no arguments)")
    lines += [
        "",
        "Approve it? It runs once if you approve. If you decline, it does not run, and retries of "
        "this same request get your answer without asking you again.",
    ]
    return {"message": "\n".join(lines), "requestedSchema": REQUESTED_SCHEMA}


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _unavailable(reason: str) -> ApprovalUnavailable:
    return ApprovalUnavailable(
        f"This tool needs a person's approval for each new action, and {_UNAVAILABLE[reason]}. "
        "Nothing ran and the idempotency key is released: retrying with the same key asks again.",
        reason=reason,
    )
