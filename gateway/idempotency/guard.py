"""The guard: runs a keyed call at most once per (principal, key) across every process on a store.

``run`` is a thin loop around the pure ``decide`` (see ``decide.py`` for the protocol): read or
claim the record, ask ``decide``, do what it says, and on a lost race (a fenced write that
matched nothing) read again and ask again. Only a won fenced write (a claim, a take-over, a
re-send) leads to ``_execute``, which holds the lease while the call runs and settles the key
from what happened:

    a result                         → COMPLETED (stored; replayed until retention ends), or
                                       released per store_errors / when it is not final
    provably not executed            → released (DownstreamUnavailable: nothing was sent;
                                       DownstreamRejected: refused before executing;
                                       ApprovalUnavailable: nobody approved it;
                                       cancelled before anything was sent)
    ``Refused`` before sending       → COMPLETED with that refusal, audited as its outcome: the
                                       key's answer until retention ends (a person declined it)
    anything else after sending      → UNKNOWN (timeout, lost connection, error after sending,
                                       forwarded cancellation): never re-run blindly

With ``cancel = "finish"`` the downstream call and the settling are shielded from the client's
cancellation, so a client that gives up does not strand the key.

A settling write that fails because the store stalls is retried in the background while this
process still holds the result (``SETTLE_FOR``, renewing the lease meanwhile); if another
process judged the lease dead and marked the key unknown in between, the late result still
settles it (``Settled.LATE``, audited as ``settled_late``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.abc

from gateway import meta
from gateway.errors import (
    DownstreamUnavailable,
    GatewayError,
    IdempotencyKeyConflict,
    IdempotencyKeyExpired,
    IdempotencyKeyInProgress,
    NotExecuted,
    OutcomeUnknown,
    StoreUnavailable,
    outcome_of_code,
)
from gateway.idempotency.decide import Call, Verdict, decide
from gateway.idempotency.replays import ReplayCache
from gateway.manifests.models import ToolPolicy
from gateway.outcomes import Outcome
from gateway.store.base import Store
from gateway.store.records import Claim, Event, Record, RecordState, Settled

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
TOMBSTONE_DAYS = 7
SEND_MARGIN = 0.5  # seconds short of its lease a holder stops sending (clock error between gateways)
SETTLE_FOR = 600.0  # seconds a held result keeps being written while the store is unreachable
_SETTLE_BACKOFF = (0.05, 2.0)
_CHANGES_BUFFER = 1024


@dataclass(slots=True)
class Attempt:
    """Whether the call was handed to the downstream: the line between "release" and "unknown".

    The downstream session calls ``mark_sent`` right before it writes the request; a failure
    that comes before that (a cancellation while waiting for a reconnect, say) proves nothing
    was sent.
    """

    sent: bool = False
    resent: bool = False  # this run sends again a call already sent once (a forwarded key's re-send)
    check: Callable[[], None] | None = None  # raises ``NotExecuted`` when the call must not go out

    def mark_sent(self) -> None:
        if self.check is not None:
            self.check()  # before ``sent``: a refusal here proves nothing was written
        self.sent = True


class Refused(Exception):
    """Raised by an ``Execute`` before anything is sent: nothing ran, and the key is settled with
    ``result`` (a refusal the caller built, ``_meta["idem-gateway/error"]`` set) until its
    retention ends, audited as ``outcome``. Every retry gets the same result without running
    (``Guard._replay``). The seam for a refusal that is the key's answer, not the call's
    (a person declined it); the guard knows nothing of why.
    """

    def __init__(
        self, result: dict[str, Any], outcome: Outcome, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(outcome.value)
        self.result = result
        self.outcome = outcome
        self.detail = detail or {}


Execute = Callable[[Attempt], Awaitable[dict[str, Any]]]
"""Sends the call downstream and returns the raw result dict.

Raises a ``NotExecuted`` error when the downstream provably did not run it (the key is
released), ``Refused`` to settle the key with a refusal before sending; anything else after
``Attempt.mark_sent`` means "sent, outcome unknown".
"""

IsFinal = Callable[[dict[str, Any]], bool]


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

    def call(self, *, wait_over: bool = False) -> Call:
        return Call(
            tool=self.tool,
            fingerprint=self.fingerprint,
            forwards_key=self.forwards_key,
            expired=self.policy.expired,
            in_flight=self.policy.in_flight,
            wait_over=wait_over,
        )


@dataclass(eq=False, slots=True)
class _Parked:
    """One call counted in ``Guard.waiting`` from its first wait until it returns: a test (or
    ``/metrics``) can see a duplicate parked, which polling the store between waits does not hide."""

    waiters: _Waiters
    ident: tuple[str, str]
    counted: bool = False

    def enter(self) -> None:
        if not self.counted:
            self.counted = True
            count = self.waiters.count[self.ident] = self.waiters.count.get(self.ident, 0) + 1
            logger.debug("a duplicate waits for its key's first call (%d waiting)", count)

    def leave(self) -> None:
        if self.counted:
            self.counted = False
            self.waiters.count[self.ident] -= 1
            if not self.waiters.count[self.ident]:
                del self.waiters.count[self.ident]


@dataclass(eq=False, slots=True)
class _Held:
    """A lease this process holds; renewed until the key is settled."""

    principal: str
    key: str
    fence: int
    lease_deadline: float = math.inf  # by ``Guard.monotonic``: past it, others may judge us dead
    settling: bool = False  # a settling write is under way: a failed renewal is expected
    claimed: Record | None = None  # the record as our claim (or take-over) wrote it


@dataclass(slots=True)
class _Waiters:
    """In-process wake-ups for waiters on a key; other processes are noticed by polling."""

    events: dict[tuple[str, str], anyio.Event] = field(default_factory=dict)
    count: dict[tuple[str, str], int] = field(default_factory=dict)

    def event(self, ident: tuple[str, str]) -> anyio.Event:
        ev = self.events.get(ident)
        if ev is None:
            ev = self.events[ident] = anyio.Event()
        return ev

    def wake(self, ident: tuple[str, str]) -> None:
        ev = self.events.pop(ident, None)
        if ev is not None:
            ev.set()


class Guard:
    """Runs keyed calls exactly once per (principal, key) across every process on one store.

    ``serve`` must run in the server's task group: it renews leases, keeps the store's clock
    in sync, retries settling writes the store refused, and tells listeners about changes.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        owner: str | None = None,
        lease_ttl: float = 10.0,
        poll_min: float = 0.005,
        poll_max: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        settle_for: float = SETTLE_FOR,
        replays: ReplayCache | None = None,
        audit_later: Callable[[Event], bool] | None = None,
    ) -> None:
        self.store = store
        self.replays = replays
        """Completed records this process wrote or read: a replay from here costs no round trip."""
        self.audit_later = audit_later
        """Queues a replay's audit event to be written after the answer (False: write it now)."""
        self.clock: Clock = clock or store.now
        self.owner = owner or default_owner()
        self.lease_ttl = lease_ttl
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.monotonic = monotonic  # the in-flight wait's deadline (injectable for tests)
        self.settle_for = settle_for
        # Leeway for the clock error left between gateways after syncing with the store.
        self._send_margin = min(SEND_MARGIN, lease_ttl / 4)
        self._held: dict[tuple[str, str, int], _Held] = {}
        self._waiters = _Waiters()
        self.listeners: list[Callable[[str, str], Awaitable[None]]] = []
        """Told (principal, key) whenever this process changed a record (subscriptions)."""
        self._changes_in, self._changes_out = anyio.create_memory_object_stream[tuple[str, str]](
            _CHANGES_BUFFER
        )
        self._settle_in, self._settle_out = anyio.create_memory_object_stream[_Settle](math.inf)

    # ---- observability (tests gate races on these) --------------------------------------------

    def waiting(self, principal: str | None = None, key: str | None = None) -> int:
        """How many duplicates are parked waiting (for one key, or in all)."""
        if principal is not None and key is not None:
            return self._waiters.count.get((principal, key), 0)
        return sum(self._waiters.count.values())

    def holding(self) -> int:
        """How many calls this process runs (or settles) under a lease right now."""
        return len(self._held)

    # ---- background work -------------------------------------------------------------------

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew leases, sync the clock, retry settling writes, notify listeners; until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_leases)
            tg.start_soon(self._settle_pending)
            tg.start_soon(self._notify_listeners)
            task_status.started()

    async def _renew_leases(self) -> None:
        """One loop for all calls, instead of a task per call, keeps the hot path free of it."""
        interval = self.lease_ttl / 3
        while True:
            await anyio.sleep(interval)
            try:
                await self.store.sync_clock()
            except StoreUnavailable as exc:
                logger.error("could not read the store's clock: %s", exc)
            for ident, held in list(self._held.items()):
                asked = self.monotonic()  # the lease runs from before the write, never from after
                until = self.clock() + timedelta(seconds=self.lease_ttl)
                try:
                    renewed = await self.store.renew(held.principal, held.key, held.fence, until)
                except StoreUnavailable as exc:
                    logger.error("could not renew a lease: %s", exc)
                    continue
                if renewed:
                    held.lease_deadline = asked + self.lease_ttl
                if not renewed and self._held.get(ident) is held and not held.settling:
                    # Still ours to run, and the store says another process took it or judged
                    # us dead: worth a warning (a completion racing this renewal is not).
                    logger.warning("lost the lease on a key while its call ran (fence %d)", held.fence)

    async def _notify_listeners(self) -> None:
        async with self._changes_out:
            async for principal, key in self._changes_out:
                for listener in self.listeners:
                    try:
                        await listener(principal, key)
                    except Exception:  # a subscriber must never break the guard
                        logger.exception("record-change listener failed")

    def _changed(self, principal: str, key: str) -> None:
        """Tell listeners without waiting for them: a stuck subscriber must not delay a result."""
        if not self.listeners:
            return
        try:
            self._changes_in.send_nowait((principal, key))
        except anyio.WouldBlock:
            logger.warning("record-change notifications are falling behind; one was dropped")

    async def _settle_pending(self) -> None:
        async with self._settle_out, anyio.create_task_group() as tg:
            async for job in self._settle_out:
                tg.start_soon(job.run, self)

    # ---- the state machine -----------------------------------------------------------------

    async def run(
        self, intent: Intent, execute: Execute, *, is_final: IsFinal | None = None
    ) -> dict[str, Any]:
        """Execute, replay, wait or refuse. Returns a result dict; raises ``GatewayError``.

        ``is_final``: whether a result settles the key (a multi-round ``input_required``
        answer does not: the key is released and the continuation round claims it again).
        """
        parked = _Parked(self._waiters, (intent.principal, intent.key))
        try:
            return await self._run(intent, execute, is_final, parked)
        finally:
            parked.leave()

    async def _run(
        self, intent: Intent, execute: Execute, is_final: IsFinal | None, parked: _Parked
    ) -> dict[str, Any]:
        ident = (intent.principal, intent.key)
        deadline = self.monotonic() + intent.policy.wait
        delay = self.poll_min
        record: Record | None = None
        verdict = Verdict.CLAIM
        while True:
            now = self.clock()
            if verdict is Verdict.CLAIM and (cached := self._cached(ident)) is not None:
                record = cached  # completed: decide replays it, or refuses another payload
            elif verdict is Verdict.CLAIM:
                asked = self.monotonic()
                claimed = await self.store.claim(self._claim(intent, now))
                if claimed.acquired:
                    return await self._execute(intent, claimed.record, execute, is_final, asked=asked)
                record = claimed.record
            elif verdict in (Verdict.TAKE_OVER, Verdict.RESEND):
                assert record is not None
                asked = self.monotonic()
                taken = await self.store.take_over(self._claim(intent, now), expected=record)
                if taken is not None:
                    resent = verdict is Verdict.RESEND
                    return await self._execute(intent, taken, execute, is_final, asked=asked, resent=resent)
                record = await self.store.get(*ident)
            elif verdict is Verdict.MARK_UNKNOWN:
                assert record is not None
                event = self._event(intent, Outcome.UNKNOWN, detail={"reason": "lease_holder_died"})
                if await self.store.mark_unknown(*ident, record.fence, event=event, lease_dead_at=now):
                    self._changed(*ident)
                    raise self._unknown_error("lease_holder_died")
                record = await self.store.get(*ident)
            elif verdict is Verdict.WAIT:
                parked.enter()
                await self._wait(ident, min(delay, max(0.0, deadline - self.monotonic())))
                delay = min(delay * 2, self.poll_max)
                record = self._cached(ident) or await self.store.get(*ident)
            elif verdict is Verdict.REPLAY:
                assert record is not None
                return await self._replay(intent, record)
            else:
                raise await self._refuse(intent, self._refusal(verdict, intent, record, now))
            verdict = decide(record, intent.call(wait_over=self.monotonic() >= deadline), self.clock())

    def _cached(self, ident: tuple[str, str]) -> Record | None:
        return self.replays.get(*ident) if self.replays is not None else None

    def _remember(self, record: Record) -> None:
        if self.replays is not None:
            self.replays.put(record)

    def _refusal(
        self, verdict: Verdict, intent: Intent, record: Record | None, now: datetime
    ) -> GatewayError:
        if verdict is Verdict.CONFLICT:
            return IdempotencyKeyConflict(
                "This idempotency key was already used for a different action. Generate a new "
                "key for this action; reuse a key only to retry exactly the same call."
            )
        if verdict is Verdict.EXPIRED:
            return IdempotencyKeyExpired(
                "This idempotency key's retention has ended and it cannot be reused. "
                "If you intend a new action, generate a new key."
            )
        if verdict is Verdict.IN_PROGRESS:
            assert record is not None
            return self._in_progress(record, now, intent.timeout)
        assert verdict is Verdict.UNKNOWN, verdict
        return self._unknown_error()

    async def _wait(self, ident: tuple[str, str], seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._waiters.event(ident).wait()

    async def _execute(
        self,
        intent: Intent,
        claimed: Record,
        execute: Execute,
        is_final: IsFinal | None,
        *,
        asked: float,
        resent: bool = False,
    ) -> dict[str, Any]:
        ident, fence = (intent.principal, intent.key), claimed.fence
        held = self._held[(*ident, fence)] = _Held(
            intent.principal, intent.key, fence, lease_deadline=asked + self.lease_ttl, claimed=claimed
        )
        attempt = Attempt(resent=resent, check=lambda: self._check_lease(held))
        started = time.perf_counter()
        try:
            # "finish": the client's cancellation must not abandon a call already sent.
            with anyio.CancelScope(shield=intent.policy.cancel == "finish"):
                try:
                    result = await self._call_downstream(intent, held, attempt, execute, started)
                except Refused as refused:
                    return refused.result
                answer = await self._settle_result(intent, held, result, started, resent, is_final)
            return answer
        finally:
            if not held.settling:
                self._held.pop((*ident, fence), None)
            self._waiters.wake(ident)
            self._changed(*ident)

    def _check_lease(self, held: _Held) -> None:
        """Refuse to send on a lease this process's own clock says is over.

        Past its lease, another gateway may have judged this holder dead and an operator may have
        released the key: a call sent now could run under a released key, and its retry again.
        No lease can close that window without the downstream checking a fencing token; this
        shrinks it to the instant between this check and the write.
        """
        if self.monotonic() >= held.lease_deadline - self._send_margin:
            raise DownstreamUnavailable(
                "The call was not sent: this gateway's claim on the key ran out before it could "
                "send (the process was paused or the store slow). Nothing ran; retry with the "
                "same idempotency key.",
                reason="lease_expired_before_send",
            )

    async def _call_downstream(
        self, intent: Intent, held: _Held, attempt: Attempt, execute: Execute, started: float
    ) -> dict[str, Any]:
        """The downstream's result; any failure settles the key (released or unknown) and raises."""
        cancelled = anyio.get_cancelled_exc_class()
        try:
            return await execute(attempt)
        except Refused as refused:
            if attempt.sent:  # a refusal cannot stand for a call that may have run
                await self._lost(intent, held, "refused_after_send", started)
                raise self._unknown_error("refused_after_send", forwards_key=intent.forwards_key) from refused
            event = self._event(intent, refused.outcome, duration_ms=_ms(started), detail=refused.detail)
            await self._complete(intent, held, refused.result, is_error=True, event=event)
            raise
        except NotExecuted as exc:
            detail = exc.audit_detail()
            event = self._event(intent, exc.audit_outcome, duration_ms=_ms(started), detail=detail)
            await self._settle(held, "release", lambda: self.store.release(*_id(held), event=event))
            raise
        except cancelled:
            if attempt.sent:
                await self._lost(intent, held, "cancelled", started)
            else:  # the client gave up before anything was written: nothing ran
                event = self._event(intent, Outcome.CANCELLED, duration_ms=_ms(started))
                await self._settle(held, "release", lambda: self.store.release(*_id(held), event=event))
            raise
        except Exception as exc:
            reason = str(getattr(exc, "reason", None) or type(exc).__name__)
            logger.warning("a keyed call's outcome is unknown (%s)", reason, exc_info=exc)
            await self._lost(intent, held, reason, started)
            raise self._unknown_error(reason, forwards_key=intent.forwards_key) from exc

    async def _settle_result(
        self,
        intent: Intent,
        held: _Held,
        result: dict[str, Any],
        started: float,
        resent: bool,
        is_final: IsFinal | None,
    ) -> dict[str, Any]:
        duration = _ms(started)
        is_error = bool(result.get("isError", False))
        detail: dict[str, Any] = {"resent": True} if resent else {}
        if is_error:
            detail["is_error"] = True
        executed = meta.stamped(result, outcome=Outcome.EXECUTED.value)
        if (is_final is not None and not is_final(result)) or (is_error and not intent.policy.store_errors):
            detail["stored"] = False
            event = self._event(intent, Outcome.EXECUTED, duration_ms=duration, detail=detail)
            await self._settle(held, "release", lambda: self.store.release(*_id(held), event=event))
            return executed
        event = self._event(intent, Outcome.EXECUTED, duration_ms=duration, detail=detail)
        await self._complete(intent, held, result, is_error=is_error, event=event)
        return executed

    async def _complete(
        self, intent: Intent, held: _Held, result: dict[str, Any], *, is_error: bool, event: Event
    ) -> None:
        """Store ``result`` as the key's answer until its retention ends."""
        now = self.clock()
        expires = now + timedelta(seconds=intent.policy.retention)
        tombstone = self._tombstone(intent, expires)

        async def complete() -> Settled:
            settled = await self.store.complete(
                *_id(held),
                result=result,
                is_error=is_error,
                executed_at=now,
                expires_at=expires,
                tombstone_until=tombstone,
                event=event,
            )
            if settled is not Settled.LOST and held.claimed is not None:
                self._remember(
                    replace(
                        held.claimed,
                        state=RecordState.COMPLETED,
                        lease_owner=None,
                        lease_expires_at=None,
                        expires_at=expires,
                        tombstone_until=tombstone,
                        first_executed_at=now,
                        result=result,
                        is_error=is_error,
                    )
                )
            return settled

        await self._settle(held, "complete", complete)

    async def _lost(self, intent: Intent, held: _Held, reason: str, started: float) -> None:
        event = self._event(intent, Outcome.UNKNOWN, duration_ms=_ms(started), detail={"reason": reason})
        await self._settle(held, "mark unknown", lambda: self.store.mark_unknown(*_id(held), event=event))

    async def _settle(self, held: _Held, what: str, write: Callable[[], Awaitable[Any]]) -> None:
        """Write how the key ended, shielded; if the store refuses, keep trying in the background
        (holding the lease) so a result this process has is not lost to a store stall."""
        held.settling = True
        with anyio.CancelScope(shield=True):
            try:
                outcome = await write()
            except StoreUnavailable as exc:
                logger.error("could not %s a key (the store is unavailable: %s); retrying", what, exc)
                self._settle_in.send_nowait(_Settle(held, what, write, self.monotonic() + self.settle_for))
                return
        held.settling = False
        _report(what, outcome, held)

    async def _replay(self, intent: Intent, record: Record) -> dict[str, Any]:
        assert record.result is not None
        self._remember(record)
        refused = _refusal_outcome(record.result)
        if refused is not None:  # settled by ``Refused``: the same refusal, as it was, nothing run
            await self._audit_replay(self._event(intent, refused, detail={"replayed": True}))
            return record.result
        await self._audit_replay(self._event(intent, Outcome.REPLAYED, cost=intent.policy.cost))
        first = record.first_executed_at or record.created_at
        return meta.stamped(record.result, outcome=Outcome.REPLAYED.value, first_executed_at=meta.iso(first))

    async def _audit_replay(self, event: Event) -> None:
        """A replay changes no record: its audit line may follow the answer (``audit_later``)."""
        if self.audit_later is None or not self.audit_later(event):
            await self._quietly(self.store.append_event(event))

    def _unknown_error(self, reason: str | None = None, *, forwards_key: bool = False) -> OutcomeUnknown:
        extra = {"reason": reason} if reason else {}
        if forwards_key:
            return OutcomeUnknown(
                "A call with this idempotency key reached the tool, but its outcome was not learned. "
                "The tool deduplicates this key itself, so retry with the same key: the gateway sends "
                "it again and the tool answers once. Never use a new key for this action.",
                retry_with_same_key=True,
                **extra,
            )
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

    @staticmethod
    def _tombstone(intent: Intent, expires: datetime) -> datetime | None:
        return expires + timedelta(days=TOMBSTONE_DAYS) if intent.policy.expired == "reject" else None

    def _claim(self, intent: Intent, now: datetime) -> Claim:
        expires = now + timedelta(seconds=intent.policy.retention)
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
            tombstone_until=self._tombstone(intent, expires),
        )

    def _event(
        self,
        intent: Intent,
        outcome: Outcome,
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
            outcome=outcome.value,
            fingerprint=intent.fingerprint,
            duration_ms=duration_ms,
            arguments=intent.arguments,
            detail=detail or {},
            cost=cost,
        )

    @staticmethod
    async def _quietly(op: Awaitable[Any]) -> Any:
        """Audit writes must not turn a decided call into a failure."""
        try:
            return await op
        except StoreUnavailable as exc:
            logger.error("store write failed: %s", exc)
            return None


@dataclass(eq=False, slots=True)
class _Settle:
    """A settling write the store refused, retried with backoff until ``deadline``."""

    held: _Held
    what: str
    write: Callable[[], Awaitable[Any]]
    deadline: float

    async def run(self, guard: Guard) -> None:
        delay = _SETTLE_BACKOFF[0]
        while True:
            await anyio.sleep(delay)
            try:
                outcome = await self.write()
            except StoreUnavailable as exc:
                if guard.monotonic() >= self.deadline:
                    logger.error(
                        "gave up trying to %s a key after %.0fs (%s): its lease lapses and it turns unknown",
                        self.what,
                        guard.settle_for,
                        exc,
                    )
                    break
                delay = min(delay * 2, _SETTLE_BACKOFF[1])
                continue
            _report(self.what, outcome, self.held)
            break
        guard._held.pop(_id(self.held), None)
        guard._waiters.wake((self.held.principal, self.held.key))
        guard._changed(self.held.principal, self.held.key)


def _id(held: _Held) -> tuple[str, str, int]:
    return (held.principal, held.key, held.fence)


def _report(what: str, outcome: Any, held: _Held) -> None:
    if outcome is Settled.LATE:
        logger.info("a late result settled a key that had been marked unknown (fence %d)", held.fence)
    elif outcome is Settled.LOST or outcome is False:
        logger.warning("could not %s a key: it moved on while the call ran (fence %d)", what, held.fence)


def _refusal_outcome(result: dict[str, Any]) -> Outcome | None:
    """The outcome of a stored refusal (``_meta["idem-gateway/error"]``, which a downstream cannot
    set: its results lose the gateway's ``_meta`` keys); ``None`` for a tool's own result."""
    error = (result.get("_meta") or {}).get(meta.ERROR)
    code = error.get("code") if isinstance(error, dict) else None
    return outcome_of_code(code) if isinstance(code, str) else None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
