"""One tools/call, start to finish: look up, refuse early, guard, send downstream, shape the result.

catalog lookup → (read-only: validate → downstream) |
(side-effecting: key → validate → fingerprint → guard.run([approval →] downstream call)) → result
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from jsonschema import exceptions as jsonschema_exceptions

from gateway.audit.bounds import bound_arguments, event_key
from gateway.downstream.errors import DownstreamError, DownstreamRejected
from gateway.errors import GatewayError, InvalidArguments, StoreUnavailable
from gateway.idempotency.fingerprint import Fingerprinter
from gateway.idempotency.guard import Attempt, Guard, Intent
from gateway.idempotency.keys import extract_key, forwards_key
from gateway.server import approval
from gateway.server.catalog import ExposedTool
from gateway.server.errors import refusal_result
from gateway.server.limits import RateLimitedLog, RateLimiter
from gateway.server.results import is_final, jsonrpc_error
from gateway.store.records import Event

logger = logging.getLogger(__name__)
_store_log = RateLimitedLog(logger)  # a store outage refuses every call: one line per interval

REDACTED = "***"


class Downstream(Protocol):
    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,
        on_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]: ...


SessionFor = Callable[[str], Downstream]
AuditSink = Callable[[Event], Awaitable[None]]


def redact(arguments: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Arguments as the audit trail may keep them: masked, then bounded in size."""
    if not fields:
        return bound_arguments(arguments)
    return bound_arguments({k: (REDACTED if k in fields else v) for k, v in arguments.items()})


def _non_finite(value: Any, path: str = "") -> str | None:
    """The path of a NaN or infinite number (JSON has none: forwarded, they would become null)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "(arguments)")
    if isinstance(value, dict):
        for k, v in value.items():
            found = _non_finite(v, f"{path}/{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _non_finite(v, f"{path}/{i}" if path else str(i))
            if found:
                return found
    return None


def _check_arguments(tool: ExposedTool, arguments: Mapping[str, Any]) -> None:
    bad_number = _non_finite(dict(arguments))
    if bad_number is not None:
        raise InvalidArguments(
            f"The arguments hold a number that is not finite (NaN or Infinity) at {bad_number}; JSON "
            "numbers are finite. Fix the arguments and call again; the same idempotency key may be reused.",
            path=bad_number,
        )
    error = jsonschema_exceptions.best_match(tool.validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
        raise InvalidArguments(
            f"The arguments do not match the tool's input schema at {where}: {error.message}. "
            "Fix the arguments and call again; the same idempotency key may be reused.",
            path=where,
        )


@dataclass(frozen=True)
class CallPath:
    """What every tools/call goes through, built once per gateway: the guard that holds each key,
    the audit trail, the keyed fingerprint, the approvals and the per-principal rate limit."""

    guard: Guard
    audit: AuditSink
    fingerprint: Fingerprinter
    approvals: approval.Approvals
    rate_limiter: RateLimiter | None = None

    async def call(
        self,
        tool: ExposedTool,
        arguments: Mapping[str, Any],
        meta: Mapping[str, Any] | None,
        *,
        principal: str,
        session: Downstream,
    ) -> dict[str, Any]:
        """Run one call through the gateway and return the CallToolResult dict the client gets.

        Read-only tools go straight through (``_read_only``); a side-effecting one goes key →
        validate → fingerprint → ``guard.run``, so its downstream call runs at most once per key.
        """
        if not tool.side_effects:
            return await _read_only(tool, arguments, session)
        timeout = tool.spec.timeout
        policy = tool.policy
        if self.rate_limiter is not None and (limited := self.rate_limiter.take(principal)) is not None:
            return refusal_result(limited)  # nothing stored, not audited: a flood leaves no trace
        try:
            keyed = extract_key(
                arguments,
                meta,
                policy,
                native=tool.native,
                forward_as=lambda key: self.fingerprint.forwarded_key(principal, key),
            )
            _check_arguments(
                tool, keyed.fingerprint_arguments | ({"idempotency_key": keyed.key} if tool.native else {})
            )
        except GatewayError as error:
            await _record_refusal(self.audit, error, tool, principal, arguments, at=self.guard.clock())
            return refusal_result(error)

        asks = approval.needed(policy.approve, keyed.fingerprint_arguments)
        intent = Intent(
            principal=principal,
            key=keyed.key,
            server=tool.spec.name,
            tool=tool.name,
            fingerprint=self.fingerprint(tool.name, keyed.fingerprint_arguments, policy.fingerprint_exclude),
            policy=policy,
            arguments=redact(keyed.fingerprint_arguments, policy.redact),
            forwards_key=forwards_key(policy, native=tool.native),
            # The first call may wait for its approval before it is even sent.
            timeout=timeout + (policy.approval_timeout if asks else 0.0),
        )

        async def execute(attempt: Attempt) -> dict[str, Any]:
            if asks:
                await self.approvals.confirm(intent, attempt)  # returns when approved; else refuses
            return await session.call_tool(
                tool.downstream_name,
                keyed.forward_arguments,
                meta=keyed.forward_meta,
                headers=keyed.forward_headers,
                timeout=timeout,
                on_send=attempt.mark_sent,
            )

        try:
            return await self.guard.run(intent, execute, is_final=is_final)
        except StoreUnavailable as error:
            # The client gets the code and a fixed sentence; the detail (which names the store)
            # is for the operator, once per interval.
            _store_log.log(logging.ERROR, "store", "store unavailable, refusing calls: %s", error)
            return refusal_result(error)
        except GatewayError as error:
            return refusal_result(error)
        except DownstreamRejected as exc:
            # Refused before executing (unknown tool, invalid params): the key was released, and
            # the client sees the downstream's answer as the tool error it is.
            return _tool_error(exc)


async def _read_only(tool: ExposedTool, arguments: Mapping[str, Any], session: Downstream) -> dict[str, Any]:
    """No key, no record: validate and send; cancellation flows straight through."""
    try:
        _check_arguments(tool, arguments)
        return await session.call_tool(tool.downstream_name, dict(arguments), timeout=tool.spec.timeout)
    except GatewayError as error:
        return refusal_result(error)
    except DownstreamError as exc:
        # The downstream's own JSON-RPC error reaches the client as it would directly.
        if (answered := jsonrpc_error(exc, tool.spec.secrets)) is not None:
            raise answered from None
        return _tool_error(exc)


def _tool_error(exc: DownstreamError) -> dict[str, Any]:
    """The downstream's error as the client sees it: a tool error with its message."""
    return {"content": [{"type": "text", "text": str(exc)}], "isError": True}


async def _record_refusal(
    audit: AuditSink,
    error: GatewayError,
    tool: ExposedTool,
    principal: str,
    arguments: Mapping[str, Any],
    *,
    at: datetime,
) -> None:
    stored, malformed = event_key(arguments.get("idempotency_key"))
    detail: dict[str, Any] = {"code": error.code} | ({"malformed_key": malformed} if malformed else {})
    event = Event(
        at=at,
        principal=principal,
        key=stored,
        server=tool.spec.name,
        tool=tool.name,
        outcome=error.audit_outcome,
        arguments=redact({k: v for k, v in arguments.items() if k != "idempotency_key"}, tool.policy.redact),
        detail=detail,
    )
    try:
        await audit(event)
    except StoreUnavailable as exc:
        _store_log.log(logging.ERROR, "store", "could not record a refusal: %s", exc)
