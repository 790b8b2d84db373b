"""One run of the protocol: real ``Guard`` instances on a ``MemoryStore``, one step at a time.

Every store operation, every downstream send and answer, every background sleep (the lease
renewal loop, the settling retries) is a *gate*: the coroutine that reaches it parks on a future
and only the explorer lets it through, choosing how (the store answers or refuses; the downstream
acts, refuses or is unreachable; its answer is a result or is lost). Between two gates a
coroutine runs alone, so a run is a sequence of atomic steps chosen by the explorer, and the same
choices replay the same run (asyncio is deterministic without timers or I/O, and none are used).

Time is global and discrete (``T`` whole seconds after ``BASE``), moved only by the explorer's
ticks; each gateway reads ``T`` plus its bounded skew (what is left of its clock error after the
store's clock correction). A paused gateway is one the explorer does not schedule while time
passes; a crashed one has all its coroutines stopped for good.

The state of a run, for memoisation, is exact: the store's record, the time, the budgets, the
ghost state of the invariants and, per coroutine, a hash of everything it was ever told (gate
results, clock readings, cancellations); a coroutine is deterministic, so equal inputs mean
equal states.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import enum
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio

from gateway.audit import commands
from gateway.downstream.errors import DownstreamLost, DownstreamRejected
from gateway.errors import DownstreamUnavailable, GatewayError, StoreUnavailable
from gateway.idempotency import guard as guard_module
from gateway.idempotency.guard import Attempt, Guard, Intent
from gateway.manifests.models import ToolPolicy
from gateway.store.memory import MemoryStore
from gateway.store.records import ClaimResult, Record, RecordState, Settled

BASE = datetime(2026, 1, 1, tzinfo=UTC)
PRINCIPAL = "p"
KEY = "model-key-0000000001"
OPERATOR_RESULT = {"content": [{"type": "text", "text": "operator"}], "isError": False}
CURRENT: contextvars.ContextVar[Actor] = contextvars.ContextVar("model_actor")


class Killed(BaseException):
    """Thrown into a crashed gateway's coroutines: no ``except Exception`` in the guard catches
    it, and no shield stops it, so a crash runs nothing but in-process ``finally`` blocks."""


@dataclass(frozen=True)
class Config:
    """One bounded configuration: who runs, what can go wrong, and how often."""

    name: str
    callers: tuple[int, ...] = (0, 1)  # the gateway of each caller (all: the same keyed call)
    skews: tuple[int, ...] = (0, 0)  # seconds each gateway's corrected clock is off (|skew| <= eps)
    forwards_key: bool = False
    lease_ttl: int = 2
    retention: int = 10
    wait: int = 1  # seconds a duplicate waits for a live call
    expired: Literal["execute", "reject"] = "execute"  # the manifest's policy values (ToolPolicy)
    in_flight: Literal["wait", "reject"] = "wait"
    cancel: Literal["finish", "forward"] = "finish"
    store_errors: bool = True
    sends: tuple[str, ...] = ("acts",)  # acts | rejects | fails (an isError result) | unavailable
    answers: tuple[str, ...] = ("result", "lost")  # for a call that acted: its result, or lost
    ticks: int = 3  # time may move up to T = ticks freely (further only when nothing else can)
    crashes: int = 0
    stalls: int = 0  # store refusals (StoreUnavailable) to spend on stall_ops
    stall_ops: frozenset[str] = frozenset({"complete", "release", "mark_unknown", "renew"})
    lost_acks: int = 0  # writes applied whose answer is lost (StoreUnavailable after the commit)
    renewals: int = 0  # passes of each gateway's lease renewal loop
    purges: int = 0  # sweeper passes
    operator: tuple[str, ...] = ()  # resolve actions: "failed" / "completed"
    cancels: int = 0  # client cancellations
    settle_for: int = 1000  # how long a refused settling write is retried (seconds)
    max_depth: int = 80  # steps in one run: more is a livelock
    strict_fencing: bool = True  # also count a send made after its own incarnation ended
    symmetric: bool = True  # interchangeable callers arrive in order (a sound reduction)
    expect: frozenset[str] = frozenset()  # what some run must show (``Report.seen``): the faults bite

    @property
    def gateways(self) -> int:
        return len(self.skews)

    @property
    def horizon(self) -> int:
        """Beyond ``ticks``, time moves only when every live caller is stuck waiting; by then
        every lease and every wait has run out."""
        return self.ticks + self.lease_ttl + self.wait + 2


@dataclass(frozen=True, slots=True)
class Footprint:
    """The shared state an action read and wrote (``T``, ``store``, ``down``, ``gw:N``,
    ``actor:NAME``, budgets, ``pending``; ``*``: everything): two actions that touch nothing the
    other writes commute, which is what the explorer's sleep sets rely on."""

    reads: frozenset[str]
    writes: frozenset[str]

    def independent(self, other: Footprint) -> bool:
        if "*" in self.reads or "*" in other.reads:
            return False
        return not (self.writes & (other.reads | other.writes)) and not (other.writes & self.reads)


class Status(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    KILLED = "killed"


@dataclass(eq=False)
class Gate:
    """Where a coroutine is parked: what it waits for and what the explorer may answer."""

    label: str
    future: asyncio.Future[Any]
    choices: tuple[str, ...] = ("ok",)
    op: Callable[[], Any] | None = None  # a store step, run when the explorer lets it through
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Actor:
    """One coroutine the explorer schedules: a caller, an operator, a renewal loop, a retry."""

    name: str
    kind: str  # caller | operator | renew | settle
    gateway: int | None
    gate: Gate | None = None
    status: Status = Status.RUNNING
    hist: int = 0  # hash of everything this coroutine was told
    task: asyncio.Task[None] | None = None
    # a caller's
    started: bool = False
    scope: anyio.CancelScope | None = None
    cancelled: bool = False
    polling: bool = False  # its next read is a poll of the WAIT loop
    last_read: Hashable = None
    fence: int | None = None
    how: str | None = None  # what the downstream did with its call
    held: str | None = None  # the result it holds (to settle)
    answer: tuple[str, str | None] | None = None
    job: Any = None  # a settle actor's job
    last_refused: bool = False  # its last store step was refused
    world: Any = None

    @property
    def daemon(self) -> bool:
        """The renewal loop never ends; the others must."""
        return self.kind == "renew"

    def told(self, *what: Hashable) -> None:
        self.hist = hash((self.hist, *what))


def sec(at: datetime | None) -> float | None:
    return None if at is None else (at - BASE).total_seconds()


def rid(result: dict[str, Any] | None) -> str | None:
    """A result's identity: the name of the caller whose call produced it (or ``operator``)."""
    if result is None:
        return None
    return str(result["content"][0]["text"])


def canon(record: Record | None) -> Hashable:
    if record is None:
        return None
    return (
        record.state.value,
        record.fence,
        record.lease_owner,
        sec(record.lease_expires_at),
        sec(record.created_at),
        sec(record.expires_at),
        sec(record.tombstone_until),
        sec(record.first_executed_at),
        rid(record.result),
        record.is_error,
    )


def digest(value: Any) -> Hashable:
    if isinstance(value, Record) or value is None:
        return canon(value)
    if isinstance(value, ClaimResult):
        return (value.acquired, canon(value.record))
    if isinstance(value, bool | int | str | Settled):
        return value
    return type(value).__name__


class GatedStore(MemoryStore):
    """``MemoryStore`` whose every operation is a gate; the step itself is the real ``*_now``."""

    def __init__(self, world: World) -> None:
        super().__init__(clock=world.store_clock, fences=world.new_fence)
        self.world = world

    def record(self) -> Record | None:
        return self.records.get((PRINCIPAL, KEY))

    async def claim(self, claim: Any) -> ClaimResult:
        return await self.world.store_gate("claim", lambda: self.claim_now(claim), now=claim.now)

    async def get(self, principal: str, key: str) -> Record | None:
        actor = CURRENT.get()
        poll, actor.polling = actor.polling, False
        return await self.world.store_gate("get", lambda: self.records.get((principal, key)), poll=poll)

    async def take_over(self, claim: Any, *, expected: Record) -> Record | None:
        return await self.world.store_gate(
            "take_over", lambda: self.take_over_now(claim, expected), now=claim.now
        )

    async def renew(self, principal: str, key: str, fence: int, lease_expires_at: datetime) -> bool:
        return await self.world.store_gate(
            "renew", lambda: self.renew_now(principal, key, fence, lease_expires_at), fence=fence
        )

    async def complete(self, principal: str, key: str, fence: int, **kwargs: Any) -> Settled:
        return await self.world.store_gate(
            "complete", lambda: self.complete_now(principal, key, fence, **kwargs), fence=fence
        )

    async def mark_unknown(
        self, principal: str, key: str, fence: int, *, event: Any, lease_dead_at: datetime | None = None
    ) -> bool:
        return await self.world.store_gate(
            "mark_unknown",
            lambda: self.mark_unknown_now(principal, key, fence, event, lease_dead_at),
            fence=fence,
            now=lease_dead_at,
        )

    async def release(self, principal: str, key: str, fence: int, *, event: Any) -> bool:
        return await self.world.store_gate(
            "release", lambda: self.release_now(principal, key, fence, event), fence=fence
        )

    async def resolve(self, principal: str, key: str, *, expected: Record, **kwargs: Any) -> Record | None:
        return await self.world.store_gate(
            "resolve", lambda: self.resolve_now(expected, **kwargs), now=kwargs["now"]
        )

    async def purge(self, now: datetime, *, batch: int = 500) -> int:
        return await self.world.store_gate("purge", lambda: self.purge_now(now), now=now)


class ModelGuard(Guard):
    """The real guard; its WAIT loop's next read is marked as a poll (see ``World.enabled``)."""

    async def _wait(self, ident: tuple[str, str], seconds: float) -> None:
        CURRENT.get().polling = True
        await super()._wait(ident, seconds)


class _GuardAnyio:
    """What ``gateway.idempotency.guard`` sees as ``anyio``: the real one, except that a sleep
    (the renewal loop's, a settling retry's back-off) is a gate the explorer opens."""

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    @staticmethod
    async def sleep(delay: float) -> None:
        await CURRENT.get().world.gate("sleep", delay=delay)


@contextmanager
def patched(*patches: tuple[Any, str, Any]) -> Iterator[None]:
    """Set attributes for the duration (test seams), and put them back."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


async def _no_output_schema(manifests: str, server: str, tool: str) -> None:
    return None


def harness_patches() -> tuple[tuple[Any, str, Any], ...]:
    """The seams the world needs: gated sleeps in the guard, and an operator's resolve that does
    not start the downstream to read its outputSchema."""
    return ((guard_module, "anyio", _GuardAnyio()), (commands, "_output_schema", _no_output_schema))


class World:
    """One run. ``start``, then ``do`` actions from ``actions()``; ``key()`` is its state."""

    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.T = 0
        self.loop = asyncio.get_running_loop()
        self._fence = 0
        self.store = GatedStore(self)
        self.alive = [True] * config.gateways
        self.guards = [
            ModelGuard(
                self.store,
                clock=self._clock(g),
                monotonic=self._monotonic(g),
                owner=f"g{g}",
                lease_ttl=float(config.lease_ttl),
                poll_min=0.0,
                poll_max=0.0,
                settle_for=float(config.settle_for),
            )
            for g in range(config.gateways)
        ]
        # The guard hands a refused settling write to ``serve`` through its ``_settle_in`` stream;
        # nothing here runs ``serve``: ``_spawn_settlers`` takes each one off the stream's other
        # end and runs it as a coroutine the explorer steps.
        self.actors: list[Actor] = []
        self.by_name: dict[str, Actor] = {}
        self.calls = tuple(
            f"{how}+{answer}" if how == "acts" else how
            for how in config.sends
            for answer in (config.answers if how == "acts" else ("",))
        )
        self.stalls = config.stalls
        self.lost_acks = config.lost_acks
        self.crashes = config.crashes
        self.cancels = config.cancels
        self.purges = config.purges
        self.renewals = [config.renewals] * config.gateways
        self.settlers = [0] * config.gateways
        self.path: list[tuple[str, ...]] = []
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.trace: list[tuple[str, tuple[Any, ...]]] = []  # rendered only for a counterexample
        from tests.model.invariants import Monitor  # the monitor reads the world

        self.monitor = Monitor(self)

    def note(self, template: str, *args: Any) -> None:
        """One line of the trace, formatted only if a counterexample is shown."""
        self.trace.append((template, args))

    def lines(self) -> list[str]:
        return [template.format(*args) for template, args in self.trace]

    # ---- time ----------------------------------------------------------------------------------

    def _clock(self, g: int) -> Callable[[], datetime]:
        def clock() -> datetime:
            self._observe("clock", self.T)
            return BASE + timedelta(seconds=self.T + self.cfg.skews[g])

        return clock

    def _monotonic(self, g: int) -> Callable[[], float]:
        def monotonic() -> float:
            self._observe("monotonic", self.T)
            return float(self.T)

        return monotonic

    def store_clock(self) -> datetime:
        self._observe("store clock", self.T)
        return BASE + timedelta(seconds=self.T)

    def gateway_now(self, g: int) -> datetime:
        return BASE + timedelta(seconds=self.T + self.cfg.skews[g])

    def _observe(self, what: str, value: int) -> None:
        actor = CURRENT.get(None)
        if actor is not None:
            actor.told(what, value)
            self.reads.add("T")

    def new_fence(self) -> int:
        """A claim's fence: far apart, so a take-over's fence + 1 never meets a later claim's
        (the SQL store draws them at random for the same reason)."""
        self._fence += 100
        return self._fence

    # ---- actors --------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        policy = ToolPolicy(
            retention=float(cfg.retention),
            wait=float(cfg.wait),
            expired=cfg.expired,
            in_flight=cfg.in_flight,
            cancel=cfg.cancel,
            store_errors=cfg.store_errors,
        )
        self.intent = Intent(
            principal=PRINCIPAL,
            key=KEY,
            server="s",
            tool="t",
            fingerprint="f",
            policy=policy,
            arguments={},
            forwards_key=cfg.forwards_key,
        )
        callers = []
        for i, g in enumerate(cfg.callers):
            callers.append(Actor(f"c{i}@g{g}", "caller", g))
            self._spawn(callers[-1], self._caller)
        kind = [
            (cfg.skews[g], cfg.callers.count(g)) if cfg.symmetric else i for i, g in enumerate(cfg.callers)
        ]
        self.twins = {
            a.name: [b for b in callers[:i] if kind[callers.index(b)] == kind[i]]
            for i, a in enumerate(callers)
        }
        for i, how in enumerate(cfg.operator):
            self._spawn(Actor(f"operator{i}", "operator", None), self._operator, how)
        if cfg.renewals:
            for g in range(cfg.gateways):
                self._spawn(Actor(f"renew@g{g}", "renew", g), self._renew)
        await self.settle()

    def _spawn(self, actor: Actor, body: Callable[..., Any], *args: Any) -> None:
        actor.world = self
        self.actors.append(actor)
        self.by_name[actor.name] = actor

        async def run() -> None:
            CURRENT.set(actor)
            try:
                await body(actor, *args)
            except Killed:
                actor.status = Status.KILLED
                return
            except BaseException as exc:  # anything else escaping a coroutine is a finding
                actor.status = Status.DONE
                self.monitor.violation("crash", f"{actor.name} raised {exc!r}")
                if not isinstance(exc, Exception):
                    raise
                return
            actor.status = Status.DONE

        actor.task = self.loop.create_task(run(), context=contextvars.Context())

    async def gate(self, label: str, *, choices: tuple[str, ...] = ("ok",), **info: Any) -> Any:
        actor = CURRENT.get()
        gate = Gate(label, self.loop.create_future(), choices, None, info)
        actor.gate = gate
        try:
            return await gate.future
        finally:
            actor.gate = None

    async def store_gate(self, label: str, op: Callable[[], Any], **info: Any) -> Any:
        actor = CURRENT.get()
        gate = Gate(label, self.loop.create_future(), ("ok",), op, info)
        actor.gate = gate
        try:
            return await gate.future
        finally:
            actor.gate = None

    async def _caller(self, actor: Actor) -> None:
        await self.gate("start")  # when the call arrives
        actor.started = True
        guard = self.guards[actor.gateway or 0]
        with anyio.CancelScope() as scope:
            actor.scope = scope
            try:
                result = await guard.run(self.intent, self._downstream(actor))
                actor.answer = (str(result["_meta"]["idem-gateway/outcome"]), rid(result))
            except GatewayError as exc:
                actor.answer = (exc.code, None)
            except DownstreamRejected:
                actor.answer = ("rejected", None)
        if scope.cancelled_caught:
            actor.answer = ("cancelled", None)
        self.reads.add("down")
        self.monitor.answered(actor)

    def _downstream(self, actor: Actor) -> Callable[[Attempt], Any]:
        """The tool: the request is sent (or not), the tool acts (or refuses, or fails), and an
        answer comes back (or is lost). One step, or two (sent, then answered) when a client
        may cancel in between."""
        cfg = self.cfg

        async def execute(attempt: Attempt) -> dict[str, Any]:
            # ``mark_sent`` runs in the step that sends (``_downstream_step``): the guard's last
            # check before the write, and the write, are one step, as the transport makes them.
            if cfg.cancels:
                how = await self.gate("send", choices=cfg.sends, attempt=attempt)
                if isinstance(how, Exception):
                    raise how
                if how == "unavailable":
                    raise DownstreamUnavailable("the downstream is unreachable (model)")
                answer, result = await self.gate("answer", choices=cfg.answers if how == "acts" else (how,))
            else:
                sent = await self.gate("call", choices=self.calls, attempt=attempt)
                if isinstance(sent, Exception):
                    raise sent
                how, answer, result = sent
                if how == "unavailable":
                    raise DownstreamUnavailable("the downstream is unreachable (model)")
            if answer == "lost":
                raise DownstreamLost("the tool acted, then an error came back", reason="error_after_send")
            if answer == "rejects":
                raise DownstreamRejected("invalid params (model)", code=-32602)
            return result

        return execute

    async def _operator(self, actor: Actor, how: str) -> None:
        args = argparse.Namespace(principal=PRINCIPAL, key=KEY, as_=how, force=False, manifests="-")
        result = OPERATOR_RESULT if how == "completed" else None
        try:
            await commands._resolve(self.store, args, result)
            actor.answer = ("resolved", how)
        except commands.CommandError:
            actor.answer = ("refused", None)

    async def _renew(self, actor: Actor) -> None:
        await self.guards[actor.gateway or 0]._renew_leases()

    async def _settler(self, actor: Actor) -> None:
        await actor.job.run(self.guards[actor.gateway or 0])
        self.reads.add("T")
        self.monitor.settler_done(actor)

    # ---- the explorer's side -------------------------------------------------------------------

    def enabled(self, actor: Actor) -> bool:
        gate = actor.gate
        if gate is None or actor.status is not Status.RUNNING:
            return False
        if gate.label == "sleep" and actor.kind == "renew":
            g = actor.gateway or 0
            return self.renewals[g] > 0 and bool(self.guards[g]._held)
        if gate.label == "start":
            # Interchangeable callers (same skew, as many callers on their gateway) arrive in
            # order: any schedule is a renaming of one where they do (symmetry reduction).
            return all(other.started for other in self.twins[actor.name])
        if gate.label == "get" and gate.info.get("poll"):
            # A poll that would read what this waiter last read, at the same time, leaves it
            # exactly as it was (a stutter): it is worth a step only once something changed.
            return (canon(self.store.record()), self.T) != actor.last_read
        return True

    def choices(self, actor: Actor) -> tuple[str, ...]:
        gate = actor.gate
        assert gate is not None
        if gate.op is None:
            return gate.choices
        out = ["ok"]
        if self.stalls and gate.label in self.cfg.stall_ops:
            out.append("refuse")
        if self.lost_acks and gate.label not in ("get", "renew"):
            out.append("ack_lost")
        return tuple(out)

    def actions(self) -> list[tuple[str, ...]]:
        acts: list[tuple[str, ...]] = []
        for actor in self.actors:
            if self.enabled(actor):
                acts.extend(("step", actor.name, c) for c in self.choices(actor))
        stuck = not acts
        pending = [a for a in self.actors if a.status is Status.RUNNING and not a.daemon]
        if not pending and not self.purges:
            return acts  # nothing left that time, a crash or a cancellation could change
        for g in range(self.cfg.gateways):
            busy = any(a.gateway == g and (a.started or a.kind == "settle") for a in pending)
            if self.crashes and self.alive[g] and busy:
                acts.append(("crash", str(g)))
        if self.cancels:
            for a in pending:
                if a.kind == "caller" and a.started and not a.cancelled:
                    acts.append(("cancel", a.name))
        if self.purges:
            acts.append(("purge",))
        if self.T < self.cfg.ticks or (stuck and pending and self.T < self.cfg.horizon):
            acts.append(("tick",))  # past ``ticks``, time moves only for callers that wait on it
        return acts

    async def do(self, action: tuple[str, ...]) -> Footprint:
        """Take one action and let the coroutines come to rest; returns what it touched."""
        self.reads = set()
        self.writes = set()
        running = [a for a in self.actors if a.status is Status.RUNNING]
        self.path.append(action)
        kind = action[0]
        if kind == "step":
            self._step(self.by_name[action[1]], action[2])
        elif kind == "tick":
            # Past ``ticks`` a tick is there only while no step is: it depends on everything.
            self.reads.update(("pending", "purge") if self.T < self.cfg.ticks else ("*",))
            self.T += 1
            self.writes.add("T")
            self.note("tick: T={}", self.T)
        elif kind == "crash":
            self._crash(int(action[1]))
        elif kind == "cancel":
            actor = self.by_name[action[1]]
            actor.cancelled = True
            actor.told("cancelled")
            self.monitor.seen.add(f"cancel:{'after' if actor.how else 'before'} sending")
            self.cancels -= 1
            self.reads.update(("pending", "purge"))
            self.writes.update((f"actor:{actor.name}", f"gw:{actor.gateway}", "cancel"))
            self.note("{}: the client cancels", actor.name)
            assert actor.scope is not None
            actor.scope.cancel()
        elif kind == "purge":
            self.purges -= 1
            g = max(range(self.cfg.gateways), key=lambda i: self.cfg.skews[i])
            now = self.gateway_now(g)
            self.reads.add("T")
            self.writes.update(("store", "purge"))
            before = self.store.record()
            deleted = self.store.purge_now(now)
            self.note(
                "sweeper: purge at {:g} → {} deleted; {}", sec(now), deleted, Shown(self.store.record())
            )
            self.monitor.transition(None, "purge", {"now": now}, before, self.store.record(), deleted)
        await self.settle()
        if any(a.status is not Status.RUNNING for a in running):
            self.writes.add("pending")
        return Footprint(frozenset(self.reads), frozenset(self.writes))

    def _step(self, actor: Actor, choice: str) -> None:
        """Let ``actor`` through its gate: run the store step (or the downstream's), check it,
        and hand the coroutine its answer."""
        gate = actor.gate
        assert gate is not None and not gate.future.done()
        self._step_footprint(actor, gate, choice)
        if gate.op is None:
            if gate.label == "sleep" and actor.kind == "renew":
                self.renewals[actor.gateway or 0] -= 1
            self.note("{}: {} {} (T={})", actor.name, gate.label, choice, self.T)
            value = self._downstream_step(actor, gate, choice)
            actor.told(gate.label, choice)
            gate.future.set_result(value)
            return
        actor.last_refused = choice == "refuse"
        if choice == "refuse":
            self.stalls -= 1
            self.monitor.seen.add(f"refused:{gate.label}")
            self.note("{}: {} refused, the store stalls (T={})", actor.name, gate.label, self.T)
            actor.told(gate.label, "refused")
            gate.future.set_exception(StoreUnavailable("the store is stalled (model)"))
            return
        before = self.store.record()
        result = gate.op()
        after = self.store.record()
        self.note(
            "{}: {} → {} (T={}); {}{}",
            actor.name,
            gate.label,
            Shown(result, gate.label),
            self.T,
            Shown(after),
            " [its answer is lost]" if choice == "ack_lost" else "",
        )
        if gate.label == "get" or (gate.label == "claim" and not result.acquired):
            read = (canon(after), self.T)  # what it decides on next (see ``enabled``)
            if read == actor.last_read and not gate.info.get("poll"):
                # Not a poll after a wait: it read this very record at this very time, decided,
                # failed its write and reads again; from here it loops for ever.
                self.monitor.violation("livelock", f"{actor.name} spins: it reads the key unchanged, again")
            actor.last_read = read
            self.reads.add("T")
        elif gate.label == "claim":
            actor.last_read = None
        self.monitor.transition(actor, gate.label, gate.info, before, after, result)
        if gate.label == "renew":
            self.monitor.seen.add(f"renew:{result}")
        if choice == "ack_lost":
            self.lost_acks -= 1
            self.monitor.seen.add(f"ack_lost:{gate.label}")
            actor.told(gate.label, "ack lost")
            gate.future.set_exception(StoreUnavailable("the store's answer was lost (model)"))
            return
        actor.told(gate.label, digest(result))
        gate.future.set_result(result)

    def _step_footprint(self, actor: Actor, gate: Gate, choice: str) -> None:
        """What a step reads and writes, beyond what its coroutine reads as it runs on (the
        clock, noted by ``_observe``): the shared state its enabling and its effect depend on."""
        reads, writes = self.reads, self.writes
        writes.add(f"actor:{actor.name}")
        if gate.label == "start":
            writes.add("arrivals")  # the next interchangeable caller may arrive (``enabled``)
            reads.add("arrivals")
        if actor.gateway is not None:
            writes.add(f"gw:{actor.gateway}")  # the guard's in-process state (held leases)
        if gate.op is not None:
            if choice == "refuse":
                writes.add("stalls")
                return
            if choice == "ack_lost":
                writes.add("acks")
            if gate.label == "get":
                reads.add("store")
                if gate.info.get("poll"):
                    reads.add("T")  # a poll is enabled by a change of the record or of the time
            else:
                writes.add("store")
            if gate.label == "resolve":
                writes.add("down")  # an operator's result is one a replay may carry
        elif gate.label in ("send", "call"):
            reads.add("store")  # the incarnation it counts against
            writes.add("down")
        elif gate.label == "answer":
            writes.add("down")

    def _downstream_step(self, actor: Actor, gate: Gate, choice: str) -> Any:
        if gate.label in ("send", "call") and not choice.startswith("unavailable"):
            try:
                gate.info["attempt"].mark_sent()
            except DownstreamUnavailable as withheld:  # the guard would not send: nothing went out
                self.monitor.seen.add("withheld")
                return withheld
        if gate.label == "send":
            actor.how = choice
            self.monitor.sent(actor, choice)
            return choice
        if gate.label == "answer":
            return (choice, self._answer(actor, choice))
        if gate.label == "call":
            how, _, answer = choice.partition("+")
            actor.how = how
            self.monitor.sent(actor, how)
            answer = answer or how
            return (how, answer, self._answer(actor, answer))
        return None

    def _answer(self, actor: Actor, answer: str) -> dict[str, Any] | None:
        if answer not in ("result", "fails"):
            return None
        source = self.monitor.answer_of(actor)
        actor.held = source
        return {"content": [{"type": "text", "text": source}], "isError": answer == "fails"}

    def _crash(self, g: int) -> None:
        self.reads.update(("pending", "purge"))
        self.writes.update((f"gw:{g}", "crash"))
        self.writes.update(f"actor:{a.name}" for a in self.actors if a.gateway == g)
        self.crashes -= 1
        self.alive[g] = False
        self.monitor.seen.add("crash")
        self.note("g{} crashes", g)
        for actor in self.actors:
            if actor.gateway == g and actor.status is Status.RUNNING:
                actor.told("killed")
                if actor.gate is not None:
                    actor.gate.future.set_exception(Killed())
                else:  # cannot happen: every running actor is parked between steps
                    raise AssertionError(f"{actor.name} is not parked")

    async def settle(self) -> None:
        """Run the loop until every coroutine is parked or finished; start the settling retries
        the guards queued (what ``Guard.serve`` would run)."""
        loop = self.loop
        for _ in range(100_000):
            await asyncio.sleep(0)
            if loop._ready:  # type: ignore[attr-defined]  # asyncio's run queue: still busy
                continue
            if any(not h.cancelled() and h.when() <= loop.time() for h in loop._scheduled):  # type: ignore[attr-defined]
                continue
            if not self._spawn_settlers():
                break
        else:
            raise RuntimeError("the coroutines never came to rest")
        for actor in self.actors:
            if actor.status is Status.RUNNING and actor.gate is None:
                raise RuntimeError(f"{actor.name} is blocked outside a gate (a real wait or sleep?)")

    def _spawn_settlers(self) -> bool:
        """Run each settling retry a guard queued as a coroutine of its own."""
        spawned = False
        for g, guard in enumerate(self.guards):
            while True:
                try:
                    job = guard._settle_out.receive_nowait()
                except anyio.WouldBlock:
                    break
                if not self.alive[g]:
                    continue
                self.settlers[g] += 1
                self.monitor.seen.add(f"retried:{job.what}")
                actor = Actor(f"retry{self.settlers[g]}@g{g}", "settle", g, job=job)
                self.note("g{}: {} refused; retried in the background by {}", g, job.what, actor.name)
                self._spawn(actor, self._settler)
                spawned = True
        return spawned

    def key(self) -> Hashable:
        """The run's state: the shared state, and each coroutine by what it was told."""
        return (
            self.T,
            canon(self.store.record()),
            self.stalls,
            self.lost_acks,
            self.crashes,
            self.cancels,
            self.purges,
            tuple(self.renewals),
            tuple(self.alive),
            self.monitor.key(),
            tuple(self._actor_state(a) for a in self.actors),
        )

    @staticmethod
    def _actor_state(a: Actor) -> Hashable:
        """A finished coroutine by what it left behind; a running one by all it was told (it is
        deterministic, so that is its state)."""
        if a.status is not Status.RUNNING:
            return (a.name, a.status, a.fence, a.how, a.held, a.answer)
        return (a.name, a.hist, a.last_read)

    async def close(self) -> None:
        for actor in self.actors:
            if actor.status is Status.RUNNING and actor.gate is not None:
                actor.gate.future.set_exception(Killed())
        await self.settle()
        for actor in self.actors:
            assert actor.task is not None and actor.task.done(), actor.name


def show(record: Record | None) -> str:
    if record is None:
        return "no record"
    parts = [f"{record.state.value} fence {record.fence}"]
    if record.lease_expires_at is not None:
        parts.append(f"lease to {sec(record.lease_expires_at):g} ({record.lease_owner})")
    parts.append(f"retention to {sec(record.expires_at):g}")
    if record.result is not None:
        parts.append(f"result {rid(record.result)}")
    return "record " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Shown:
    """A record (or a store step's result) in a trace line, rendered when the line is."""

    value: Any
    label: str | None = None

    def __format__(self, spec: str) -> str:
        return show(self.value) if self.label is None else show_result(self.label, self.value)


def show_result(label: str, value: Any) -> str:
    if isinstance(value, ClaimResult):
        return "acquired" if value.acquired else "held by another"
    if label == "get":
        return "read"
    if label in ("take_over", "resolve"):
        return "done" if value is not None else "refused (moved on)"
    return str(value)


def state_of(record: Record | None) -> RecordState | None:
    return None if record is None else record.state
