"""The idempotency state machine: the one place that decides what a keyed call gets.

A call is claimed first (one atomic insert on principal + key) and only the caller that
claimed it runs it. Everybody else reads the existing record and its state decides:

    claimed                      → execute, then COMPLETED (stored) or released
    same key, other payload      → conflict (nothing about the first call revealed)
    record past its retention    → execute anew (take over) or refuse as expired
    COMPLETED                    → replay the stored result verbatim
    IN_PROGRESS, lease alive     → wait for the result (bounded) or refuse as in progress
    IN_PROGRESS, lease dead      → UNKNOWN (its holder crashed after sending)
    UNKNOWN                      → outcome_unknown; or, if the downstream dedupes the key
                                   itself, take over and re-send with the same key

Executing: DownstreamUnavailable (nothing sent) releases the key; any other failure after
sending (timeout, lost connection, forwarded cancellation) leaves the key UNKNOWN. With
``cancel = "finish"`` the downstream call and the write of its result are shielded from the
client's cancellation, so a client that gives up does not strand the key.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from gateway.errors import (
    DownstreamUnavailable,
    GatewayError,
    IdempotencyKeyConflict,
    IdempotencyKeyExpired,
    IdempotencyKeyInProgress,
    OutcomeUnknown,
    StoreUnavailable,
)
from gateway.manifests.models import ToolPolicy
from gateway.store.base import Store
from gateway.store.records import Claim, Event, Record, RecordState

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Execute = Callable[[], Awaitable[dict[str, Any]]]
"""Sends the call downstream and returns the raw CallToolResult dict.

Raises ``DownstreamUnavailable`` when nothing was sent; anything else means "sent, outcome unknown".
"""

META_PREFIX = "idem-gateway/"
TOMBSTONE_DAYS = 7


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Intent:
    """One keyed call, as the guard sees it: no MCP, just identity, payload and policy."""

    principal: str
    key: str
    server: str
    tool: str
    fingerprint: str
    policy: ToolPolicy
    arguments: dict[str, Any]  # redacted, for the audit trail
    forwards_key: bool = False
    timeout: float = 30.0


@dataclass(slots=True)
class _Held:
    principal: str
    key: str
    fence: int


@dataclass(slots=True)
class _Waiters:
    """In-process wake-ups for waiters on a key; other processes are noticed by polling."""

    events: dict[tuple[str, str], anyio.Event] = field(default_factory=dict)

    def event(self, principal: str, key: str) -> anyio.Event:
        ev = self.events.get((principal, key))
        if ev is None:
            ev = self.events[(principal, key)] = anyio.Event()
        return ev

    def wake(self, principal: str, key: str) -> None:
        ev = self.events.pop((principal, key), None)
        if ev is not None:
            ev.set()


class Guard:
    """Runs keyed calls exactly once per (principal, key) across every process on one store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = utcnow,
        owner: str | None = None,
        lease_ttl: float = 10.0,
        poll_min: float = 0.005,
        poll_max: float = 0.25,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner or default_owner()
        self.lease_ttl = lease_ttl
        self.poll_min = poll_min
        self.poll_max = poll_max
        self._held: dict[tuple[str, str], _Held] = {}
        self._waiters = _Waiters()
        self.listeners: list[Callable[[str, str], Awaitable[None]]] = []
        """Told (principal, key) whenever this process changed a record (subscriptions)."""

    # ---- background work -------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """Keep every lease this process holds alive; run it in the server's task group.

        One loop for all calls, instead of a task per call, keeps the hot path free of it.
        """
        interval = self.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            for held in list(self._held.values()):
                until = self.clock() + timedelta(seconds=self.lease_ttl)
                try:
                    if not await self.store.renew(held.principal, held.key, held.fence, until):
                        logger.warning("lost the lease on a key while its call ran (fence %d)", held.fence)
                except StoreUnavailable as exc:
                    logger.error("could not renew a lease: %s", exc)

    # ---- the state machine -----------------------------------------------------------------

    async def run(self, intent: Intent, execute: Execute) -> dict[str, Any]:
        """Execute, replay, wait or refuse. Returns a CallToolResult dict; raises GatewayError."""
        now = self.clock()
        claim = self._claim(intent, now)
        result = await self.store.claim(claim)
        if result.acquired:
            return await self._execute(intent, result.record.fence, execute)
        return await self._settle(intent, result.record, execute)

    async def _settle(self, intent: Intent, record: Record, execute: Execute) -> dict[str, Any]:
        policy = intent.policy
        deadline = time.monotonic() + policy.wait
        delay = self.poll_min
        while True:
            now = self.clock()
            if record.state is RecordState.EXPIRED or record.expires_at <= now:
                if policy.expired == "reject":
                    raise await self._refuse(
                        intent,
                        IdempotencyKeyExpired(
                            "This idempotency key's retention has ended and it cannot be reused. "
                            "If you intend a new action, generate a new key."
                        ),
                    )
                taken = await self.store.take_over(self._claim(intent, now), expected_fence=record.fence)
                if taken is not None:
                    return await self._execute(intent, taken.fence, execute)
            elif record.fingerprint != intent.fingerprint or record.tool != intent.tool:
                raise await self._refuse(
                    intent,
                    IdempotencyKeyConflict(
                        "This idempotency key was already used for a different action. Generate a new "
                        "key for this action; reuse a key only to retry exactly the same call."
                    ),
                )
            elif record.state is RecordState.COMPLETED:
                return await self._replay(intent, record)
            elif record.state is RecordState.UNKNOWN:
                if intent.forwards_key:
                    taken = await self.store.take_over(self._claim(intent, now), expected_fence=record.fence)
                    if taken is not None:
                        return await self._execute(intent, taken.fence, execute, resent=True)
                else:
                    raise await self._unknown(intent)
            elif record.lease_expires_at is not None and record.lease_expires_at <= now:
                # The holder stopped renewing: it died after (maybe) sending the call.
                if intent.forwards_key:
                    taken = await self.store.take_over(self._claim(intent, now), expected_fence=record.fence)
                    if taken is not None:
                        return await self._execute(intent, taken.fence, execute, resent=True)
                elif await self.store.mark_unknown(
                    intent.principal,
                    intent.key,
                    record.fence,
                    event=self._event(intent, "unknown", detail={"reason": "lease_holder_died"}),
                ):
                    await self._changed(intent.principal, intent.key)
                    raise self._unknown_error("lease_holder_died")
            elif policy.in_flight == "reject" or time.monotonic() >= deadline:
                raise await self._refuse(intent, self._in_progress(record, now, intent.timeout))
            else:
                await self._wait(intent, min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, self.poll_max)
            fresh = await self.store.get(intent.principal, intent.key)
            if fresh is None:
                # Released (or purged) meanwhile: the key is free again, claim it afresh.
                claimed = await self.store.claim(self._claim(intent, self.clock()))
                if claimed.acquired:
                    return await self._execute(intent, claimed.record.fence, execute)
                fresh = claimed.record
            record = fresh

    async def _wait(self, intent: Intent, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._waiters.event(intent.principal, intent.key).wait()

    async def _execute(
        self, intent: Intent, fence: int, execute: Execute, *, resent: bool = False
    ) -> dict[str, Any]:
        ident = (intent.principal, intent.key)
        self._held[ident] = _Held(intent.principal, intent.key, fence)
        started = time.perf_counter()
        try:
            # "finish": the client's cancellation must not abandon a call already sent.
            with anyio.CancelScope(shield=intent.policy.cancel == "finish"):
                return await self._execute_held(intent, fence, execute, started, resent)
            raise AssertionError("unreachable: a shielding scope never swallows an exception")
        finally:
            self._held.pop(ident, None)
            self._waiters.wake(*ident)
            await self._changed(*ident)

    async def _changed(self, principal: str, key: str) -> None:
        for listener in self.listeners:
            with anyio.CancelScope(shield=True):
                try:
                    await listener(principal, key)
                except Exception:  # a subscriber must never break a call
                    logger.exception("record-change listener failed")

    async def _execute_held(
        self, intent: Intent, fence: int, execute: Execute, started: float, resent: bool
    ) -> dict[str, Any]:
        cancelled = anyio.get_cancelled_exc_class()
        try:
            result = await execute()
        except DownstreamUnavailable as exc:
            duration = _ms(started)
            with anyio.CancelScope(shield=True):
                await self._quietly(
                    self.store.release(
                        intent.principal,
                        intent.key,
                        fence,
                        event=self._event(intent, "downstream_unavailable", duration_ms=duration),
                    )
                )
            raise exc
        except cancelled:
            with anyio.CancelScope(shield=True):
                await self._lost(intent, fence, "cancelled", started)
            raise
        except Exception as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            with anyio.CancelScope(shield=True):
                await self._lost(intent, fence, str(reason), started)
            raise self._unknown_error(str(reason)) from exc

        duration = _ms(started)
        is_error = bool(result.get("isError", False))
        detail: dict[str, Any] = {"resent": True} if resent else {}
        if is_error:
            detail["is_error"] = True
        if is_error and not intent.policy.store_errors:
            detail["stored"] = False
            await self._quietly(
                self.store.release(
                    intent.principal,
                    intent.key,
                    fence,
                    event=self._event(intent, "executed", duration_ms=duration, detail=detail),
                )
            )
            return _with_meta(result, {"outcome": "executed"})
        now = self.clock()
        try:
            stored = await self.store.complete(
                intent.principal,
                intent.key,
                fence,
                result=result,
                is_error=is_error,
                executed_at=now,
                event=self._event(intent, "executed", duration_ms=duration, detail=detail),
            )
        except StoreUnavailable as exc:
            # It ran; we could not record it. The lease lapses and the key turns unknown,
            # which is the truth. The caller still gets what happened.
            logger.error("executed but could not store the result: %s", exc)
            stored = False
        if not stored:
            logger.warning("late completion rejected: the key moved on while the call ran")
        return _with_meta(result, {"outcome": "executed"})

    async def _lost(self, intent: Intent, fence: int, reason: str, started: float) -> None:
        await self._quietly(
            self.store.mark_unknown(
                intent.principal,
                intent.key,
                fence,
                event=self._event(intent, "unknown", duration_ms=_ms(started), detail={"reason": reason}),
            )
        )

    async def _replay(self, intent: Intent, record: Record) -> dict[str, Any]:
        await self._quietly(self.store.append_event(self._event(intent, "replayed", cost=intent.policy.cost)))
        assert record.result is not None
        first = record.first_executed_at or record.created_at
        return _with_meta(record.result, {"outcome": "replayed", "first-executed-at": _iso(first)})

    async def _unknown(self, intent: Intent) -> GatewayError:
        return await self._refuse(intent, self._unknown_error())

    def _unknown_error(self, reason: str | None = None) -> OutcomeUnknown:
        extra = {"reason": reason} if reason else {}
        return OutcomeUnknown(
            "A call with this idempotency key reached the tool, but its outcome was never learned, so "
            "it will not be run again blindly. Read audit://keys/{key} or ask an operator to resolve "
            "the key; do not retry with a new key unless you know the action did not happen.",
            **extra,
        )

    def _in_progress(self, record: Record, now: datetime, timeout: float) -> IdempotencyKeyInProgress:
        # The first call ends, at the latest, when its downstream timeout does.
        left = (record.created_at - now).total_seconds() + timeout
        return IdempotencyKeyInProgress(
            "A call with this idempotency key is still running. Wait retry_after_seconds, then retry "
            "with the same key to get its result.",
            retry_after_seconds=max(1, math.ceil(left)),
        )

    async def _refuse(self, intent: Intent, error: GatewayError) -> GatewayError:
        await self._quietly(self.store.append_event(self._event(intent, error.audit_outcome)))
        return error

    # ---- helpers ---------------------------------------------------------------------------

    def _claim(self, intent: Intent, now: datetime) -> Claim:
        expires = now + timedelta(seconds=intent.policy.retention)
        tombstone = expires + timedelta(days=TOMBSTONE_DAYS) if intent.policy.expired == "reject" else None
        return Claim(
            principal=intent.principal,
            key=intent.key,
            server=intent.server,
            tool=intent.tool,
            fingerprint=intent.fingerprint,
            owner=self.owner,
            now=now,
            lease_expires_at=now + timedelta(seconds=self.lease_ttl),
            expires_at=expires,
            tombstone_until=tombstone,
        )

    def _event(
        self,
        intent: Intent,
        outcome: str,
        *,
        duration_ms: float | None = None,
        detail: dict[str, Any] | None = None,
        cost: float | None = None,
    ) -> Event:
        return Event(
            at=self.clock(),
            principal=intent.principal,
            key=intent.key,
            server=intent.server,
            tool=intent.tool,
            outcome=outcome,
            fingerprint=intent.fingerprint,
            duration_ms=duration_ms,
            arguments=intent.arguments,
            detail=detail or {},
            cost=cost,
        )

    @staticmethod
    async def _quietly(op: Awaitable[Any]) -> Any:
        """Audit and clean-up writes must not turn a decided call into a failure."""
        try:
            return await op
        except StoreUnavailable as exc:
            logger.error("store write failed: %s", exc)
            return None


def _with_meta(result: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    meta = dict(out.get("_meta") or {})
    for name, value in fields.items():
        meta[META_PREFIX + name] = value
    out["_meta"] = meta
    return out


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
