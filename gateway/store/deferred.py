"""Audit events written off the reply path: a replay's answer does not wait for its audit line.

Only events that change no record come here (the guard defers a replay's ``replayed`` line);
an event that goes with a record change (a completion, a release, an unknown) is written by the
store in that change's own transaction, and refusals and approvals are still written before
their answer. Losing a deferred event (a crash before ``serve`` wrote it) loses one audit line,
never a decision: the record that decides every retry was written before.

``serve`` writes the queue in arrival order, in batches of one transaction each, so a burst of
replays costs one round trip to the store rather than one each. Every read of the audit log
through this wrapper (the audit resources, the audit page, stats, approvals) first waits for
the events queued before it (``flush``): this process always reads its own writes. Another
process sees them once written, normally within one pass of the event loop, and in any case
before this gateway exits: ``serve`` writes what is left when it is cancelled (up to
``exit_wait`` seconds). Without ``serve`` running, or with ``MAX_QUEUED`` events already waiting
(a stalled store), ``defer`` declines and the caller writes the event itself.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from gateway.errors import StoreUnavailable
from gateway.store.base import Store
from gateway.store.records import Event, EventQuery

logger = logging.getLogger(__name__)

MAX_QUEUED = 10_000
EXIT_WAIT = 5.0


class DeferredEvents:
    """A ``Store`` (everything passes through to ``inner``) with a queue of deferred audit events."""

    def __init__(self, inner: Store, *, exit_wait: float = EXIT_WAIT) -> None:
        self.inner = inner
        self.exit_wait = exit_wait
        self._queue: list[Event] = []
        self._queued = 0  # events ever queued
        self._done = 0  # of those, written (or given up on)
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._serving = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def defer(self, event: Event) -> bool:
        """Queue ``event`` for ``serve``; False if it cannot (the caller then writes it itself)."""
        if not self._serving or len(self._queue) >= MAX_QUEUED:
            return False
        self._queue.append(event)
        self._queued += 1
        self._wake.set()
        return True

    async def flush(self) -> None:
        """Return once every event queued before this call is written (or given up on)."""
        target = self._queued
        while self._done < target:
            await self._progress.wait()

    # ---- reads see this process's own writes ---------------------------------------------------

    async def events(self, query: EventQuery) -> list[Event]:
        await self.flush()
        return await self.inner.events(query)

    async def outcome_counts(
        self, principal: str | None, since: datetime | None
    ) -> list[tuple[str, str, int, float]]:
        await self.flush()
        return await self.inner.outcome_counts(principal, since)

    async def purge_events(self, before: datetime) -> int:
        await self.flush()
        return await self.inner.purge_events(before)

    # ---- the writer ---------------------------------------------------------------------------

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write queued events until cancelled; then what is left, for up to ``exit_wait``."""
        self._serving = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await anyio.lowlevel.checkpoint()  # the reply that queued it goes out first
                await self._write()
        finally:
            self._serving = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.exit_wait):
                while self._queue:
                    await self._write()
            if self._queue:
                logger.error("%d audit events were not written before exit", len(self._queue))
                self._queue.clear()
            self._done = self._queued
            self._progress.set()

    async def _write(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            with anyio.CancelScope(shield=True):  # a batch taken off the queue is written whole
                await self.inner.append_events(batch)
        except StoreUnavailable as exc:
            logger.error("could not write %d audit events (they are lost): %s", len(batch), exc)
        finally:
            self._done += len(batch)
            self._progress.set()
            self._progress = anyio.Event()
