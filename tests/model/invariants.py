"""The invariants, checked on every step of a run and at its end, over a ghost state.

The ghost state counts what really happened, which no gateway can see: every send and every
effect downstream, and the *incarnation* of the key each one belongs to. An incarnation ends
only when the key legitimately becomes executable again: a release (nothing ran), an operator's
resolve as failed, or the end of a completed key's retention (purged, or taken over with
``expired = "execute"``). Anything else that makes a key executable is itself a violation, so
the sends after it count against the same incarnation.

    at_most_once    a key is sent at most once per incarnation (counted on the incarnation of
                    the claim that sent it), unless the tool dedupes the key itself, where the
                    downstream's *effects* are counted instead
    completed_kept  a completed result is never overwritten or removed before its retention is over
                    (then: purge, take-over); an operator's resolve settles unknown keys only
    result_kept     a result a live holder has ends up stored, unless the key moved on under a
                    fenced write, or the store refused every try until ``settle_for`` ran out
    unknown_stays   an unknown key only leaves UNKNOWN by its holder's late result, an operator's
                    resolve, or a forwarded key's re-send; never by time or purge
    answers         executed answers carry the caller's own result, replayed ones a result some
                    call produced (or the operator gave); a release, a ``downstream_unavailable``
                    and an unknown marked by the holder itself agree with what was sent
    live_lease      a lease alive at the deciding gateway's clock is never taken over or judged dead
    terminates      every run ends: no deadlock, no spin (a state met again on its own path, or a run
                    longer than ``max_depth``)
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.idempotency.decide import lease_alive
from gateway.store.records import Record, RecordState, Settled

if TYPE_CHECKING:
    from tests.model.world import Actor, World

IN_PROGRESS, COMPLETED, UNKNOWN, EXPIRED = (
    RecordState.IN_PROGRESS,
    RecordState.COMPLETED,
    RecordState.UNKNOWN,
    RecordState.EXPIRED,
)
KINDS = (
    "at_most_once",
    "completed_kept",
    "result_kept",
    "unknown_stays",
    "answers",
    "live_lease",
    "terminates",
    "livelock",
    "crash",
)


@dataclass
class Violation:
    kind: str
    message: str
    trace: list[str] = field(default_factory=list)
    path: list[tuple[str, ...]] = field(default_factory=list)

    def report(self) -> str:
        steps = "\n".join(f"  {i + 1:3d}. {line}" for i, line in enumerate(self.trace))
        return f"{self.kind}: {self.message}\n{steps}"


class Monitor:
    """The ghost state of one run and the checks on it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.inc = 0
        self.fence_inc: dict[int, int] = {}
        self.sends: dict[int, int] = {}  # incarnation → sends (of the claim's incarnation)
        self.sends_in_force: dict[int, int] = {}  # incarnation → sends made while it was current
        self.effects: dict[int, int] = {}
        self.fence_sent: dict[int, int] = {}
        self.fence_effects: dict[int, int] = {}
        self.memory: str | None = None  # a deduping downstream's one result for the key
        self.produced: set[str] = set()
        self.settled: dict[int, Settled] = {}
        self.gave_up: set[int] = set()
        self.stale_sends = 0
        self.violations: list[Violation] = []
        self.seen: set[str] = set()  # what happened in the run (coverage, not state)

    def key(self) -> Hashable:
        return (
            self.inc,
            tuple(sorted(self.fence_inc.items())),
            tuple(sorted(self.sends.items())),
            tuple(sorted(self.sends_in_force.items())),
            tuple(sorted(self.effects.items())),
            tuple(sorted(self.fence_effects.items())),
            self.memory,
            tuple(sorted(self.produced)),
            tuple(sorted(self.settled.items())),
            tuple(sorted(self.gave_up)),
            self.stale_sends,
        )

    def violation(self, kind: str, message: str) -> None:
        assert kind in KINDS, kind
        w = self.world
        trace = w.lines()
        self.violations.append(
            Violation(kind, message, [*trace, f"VIOLATION {kind}: {message}"], list(w.path))
        )

    # ---- downstream ---------------------------------------------------------------------------

    def sent(self, actor: Actor, how: str) -> None:
        if how == "unavailable":
            return
        cfg = self.world.cfg
        assert actor.fence is not None, f"{actor.name} sends without holding the key"
        fence = actor.fence
        inc = self.fence_inc[fence]
        self.seen.add(f"sent:{how}")
        if inc != self.inc:
            self.stale_sends += 1
            self.seen.add("stale_send")
        self.fence_sent[fence] = self.fence_sent.get(fence, 0) + 1
        self.sends[inc] = self.sends.get(inc, 0) + 1
        self.sends_in_force[self.inc] = self.sends_in_force.get(self.inc, 0) + 1
        if how == "acts" and not (cfg.forwards_key and self.memory is not None):
            self.effects[inc] = self.effects.get(inc, 0) + 1
            self.fence_effects[fence] = self.fence_effects.get(fence, 0) + 1
            if cfg.forwards_key:
                self.memory = actor.name
        if cfg.forwards_key:
            if self.effects.get(inc, 0) > 1:
                self.violation("at_most_once", f"the key's call took effect twice in incarnation {inc}")
            return
        if self.sends[inc] > 1:
            self.violation("at_most_once", f"{actor.name} sends the key a second time in incarnation {inc}")
        elif cfg.strict_fencing and inc != self.inc:
            self.violation(
                "at_most_once",
                f"{actor.name} sends under fence {fence} after its incarnation ({inc}) ended: the key is "
                f"executable again (incarnation {self.inc}) while this call runs",
            )

    def answer_of(self, actor: Actor) -> str:
        """The result the downstream answers ``actor`` with (a deduping one: its first)."""
        source = self.memory if self.world.cfg.forwards_key and self.memory else actor.name
        self.produced.add(source)
        return source

    # ---- store transitions --------------------------------------------------------------------

    def transition(
        self,
        actor: Actor | None,
        label: str,
        info: dict[str, Any],
        before: Record | None,
        after: Record | None,
        result: Any,
    ) -> None:
        if label in ("get", "renew"):
            return
        name = actor.name if actor is not None else "the sweeper"
        cfg = self.world.cfg
        now: datetime | None = info.get("now")
        if label == "claim" and result.acquired:
            self._acquired(actor, result.record.fence)
        if label == "complete":
            fence = info["fence"]
            self.settled[fence] = result
            if (
                result is Settled.LOST
                and before is not None
                and before.fence == fence
                and before.state in (IN_PROGRESS, UNKNOWN)
            ):
                self.violation("result_kept", f"{name}'s result was refused by a key it still held")
        if before == after:
            return
        state = before.state if before is not None else None
        self.seen.add(f"{label}:{state.value if state else 'none'}->{after.state.value if after else 'none'}")
        if state is UNKNOWN:
            assert before is not None
            fine = (
                label == "resolve"
                or (label == "complete" and after is not None and after.fence == before.fence)
                or (label == "take_over" and cfg.forwards_key)
            )
            if not fine:
                self.violation("unknown_stays", f"{name}'s {label} turned an unknown key into {_show(after)}")
        if state is COMPLETED:
            assert before is not None
            over = now is not None and before.expires_at <= now
            # (an operator settles only an unknown key: nobody here forces a resolve)
            fine = (label == "purge" and over) or (label == "take_over" and over and cfg.expired == "execute")
            if not fine:
                self.violation(
                    "completed_kept", f"{name}'s {label} replaced the completed result with {_show(after)}"
                )
        if state is IN_PROGRESS:
            assert before is not None
            if label in ("purge", "resolve"):
                self.violation("at_most_once", f"{name}'s {label} settled a key whose call may be running")
            holder = before.lease_owner
            if label in ("take_over", "mark_unknown") and holder is not None and holder[1:].isdigit():
                # The holder's own clock may still call its lease alive (skew): that is allowed,
                # within the skew bound; the store judges with the decider's clock.
                own = self.world.gateway_now(int(holder[1:]))
                if now is not None and not lease_alive(before, now) and lease_alive(before, own):
                    self.seen.add("judged dead by a clock ahead")
            if label in ("take_over", "mark_unknown") and now is not None and lease_alive(before, now):
                self.violation(
                    "live_lease",
                    f"{name}'s {label} displaced a lease alive to {_sec(before.lease_expires_at)}",
                )
        if label == "take_over" and result is not None:
            if state in (COMPLETED, EXPIRED):
                self.inc += 1  # retention over: the key runs anew
            self._acquired(actor, result.fence)
        if label == "release" and result:
            if self.fence_effects.get(info["fence"], 0):
                self.violation("answers", f"{name} released a key whose call took effect")
        if label == "mark_unknown" and result and now is None and not self.fence_sent.get(info["fence"]):
            self.violation("answers", f"{name} marked the key unknown although nothing was sent")
        if after is None and self._ends_incarnation(label, state, before, now):
            self.inc += 1
        if label == "resolve" and after is not None:
            self.produced.add("operator")

    def _ends_incarnation(
        self, label: str, state: RecordState | None, before: Record | None, now: Any
    ) -> bool:
        if label in ("release", "resolve"):
            return True
        if label == "purge" and before is not None and now is not None:
            if state is COMPLETED:
                return bool(before.expires_at <= now)
            return state is EXPIRED
        return False

    def _acquired(self, actor: Actor | None, fence: int) -> None:
        assert actor is not None
        self.fence_inc[fence] = self.inc
        actor.fence = fence

    # ---- ends ---------------------------------------------------------------------------------

    def answered(self, actor: Actor) -> None:
        assert actor.answer is not None
        outcome, result = actor.answer
        self.seen.add(f"answer:{outcome}")
        if outcome == "executed" and (result is None or result != actor.held):
            self.violation(
                "answers", f"{actor.name} is told executed with {result}, its call gave {actor.held}"
            )
        if outcome == "replayed" and result not in self.produced:
            self.violation("answers", f"{actor.name} is told replayed with {result}, which no call produced")
        if outcome == "downstream_unavailable" and actor.how not in (None, "unavailable"):
            self.violation("answers", f"{actor.name} is told downstream_unavailable after its call was sent")

    def settler_done(self, actor: Actor) -> None:
        """A background retry ended: if its last write was refused it gave up, which is fine
        only once ``settle_for`` has run out."""
        if not getattr(actor, "last_refused", False):
            return
        job = actor.job
        self.seen.add("gave_up")
        if self.world.T < job.deadline:
            self.violation("result_kept", f"{actor.name} gave up before settle_for ran out")
        self.gave_up.add(job.held.fence)

    def final(self) -> None:
        """At the end of a run: every result a live holder has is stored (or legitimately lost)."""
        w = self.world
        for actor in w.actors:
            if actor.kind != "caller" or actor.held is None or not w.alive[actor.gateway or 0]:
                continue
            if actor.how == "fails" and not w.cfg.store_errors:
                continue  # an error result is released, not stored, by policy
            fence = actor.fence
            assert fence is not None
            if fence not in self.settled and fence not in self.gave_up:
                self.violation("result_kept", f"{actor.name}'s result {actor.held} was never written")


def _sec(at: datetime | None) -> str:
    from tests.model.world import sec

    return f"{sec(at):g}"


def _show(record: Record | None) -> str:
    from tests.model.world import show

    return show(record)
