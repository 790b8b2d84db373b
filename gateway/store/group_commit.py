"""Group commit: durable writes that arrive together share one transaction and one fsync.

A claim must be on stable storage before its call is sent downstream, and an fsync costs
milliseconds on real disks, far more than the claim's SQL. So claims that are waiting at the
same moment are written together: the first writer to arrive *leads*; it takes every write
queued so far, runs them in one transaction in a worker thread (one commit, one fsync), and
hands each writer its own result. Writes that arrive while that commit runs queue for the next
round. When the leader's own write is done it hands the lead to the oldest waiting writer, so
no caller keeps serving others' writes.

Timeline with three claims A, B, C:

    A arrives, leads: round 1 = [A]        → thread: BEGIN; A; COMMIT (fsync)
    B, C arrive during round 1: queued
    round 1 done: A returns, B is woken as leader: round 2 = [B, C] → one fsync for both

Waiting is shielded from cancellation: once queued, a write happens, and its writer learns the
outcome (a claim must never be written and then forgotten by a cancelled caller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

Op = Callable[[Any], Any]
"""One write, run inside the shared transaction; its argument is the transaction's cursor."""

RunRound = Callable[[Sequence[Op]], list[Any]]
"""Runs ops in one transaction (in a worker thread) and returns their results, in order."""


@dataclass(eq=False)
class _Slot(Generic[T]):
    op: Op
    wake: anyio.Event = field(default_factory=anyio.Event)
    done: bool = False
    value: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Serialises durable writes into rounds of one transaction each (see the module doc)."""

    def __init__(self, run_round: RunRound) -> None:
        self._run_round = run_round
        self._queue: list[_Slot[Any]] = []
        self._leading = False
        self.rounds = 0  # how many commits ran (the contract suite checks that writes share them)

    @property
    def idle(self) -> bool:
        """No round is under way (and none queued)."""
        return not self._leading

    async def submit(self, op: Op) -> Any:
        """Run ``op`` in the next round; its result, or the round's exception."""
        slot: _Slot[Any] = _Slot(op)
        self._queue.append(slot)
        with anyio.CancelScope(shield=True):
            if self._leading:
                await slot.wake.wait()
            if not slot.done:
                self._leading = True
                await self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.value

    async def _lead(self, own: _Slot[Any]) -> None:
        try:
            while not own.done:
                batch, self._queue = self._queue, []
                try:
                    values = await anyio.to_thread.run_sync(self._run_round, [s.op for s in batch])
                except Exception as exc:
                    for slot in batch:
                        slot.error = exc
                else:
                    for slot, value in zip(batch, values, strict=True):
                        slot.value = value
                self.rounds += 1
                for slot in batch:
                    slot.done = True
                    if slot is not own:
                        slot.wake.set()
        finally:
            if self._queue:
                self._queue[0].wake.set()  # the oldest waiting writer leads the next round
            else:
                self._leading = False
