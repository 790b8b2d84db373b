"""2026-07-28 clients and 2025-era downstreams: a request that asks the client mid-call.

A 2025-era server asks its client during a call (``sampling/createMessage``,
``elicitation/create``, ``roots/list`` as JSON-RPC requests). A 2026-07-28 client takes no
server→client requests: it gets an ``input_required`` result, answers it and retries the
request with ``inputResponses`` and ``requestState`` (multi-round-trip requests, SEP-2322).
An ``Exchange`` bridges the two: the downstream call runs in the background, each question it
asks ends the current round with an ``input_required`` result whose ``requestState`` names
the exchange, and the client's retry delivers the answers and waits for the next question or
the result.

The continuation rounds belong to the exchange, not to a new call: a keyed tool's key is
claimed once, by the first round, and completed once, with the final result; a round never
runs the tool again. A plain retry of the same call (same principal, tool and arguments,
without ``requestState``) while the exchange is open re-attaches to it instead of starting
a second call. Tokens are random, bound to the principal, and live in this process only; an
exchange nobody resumes within ``ttl`` answers the server's open questions with an error.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.downstream.relay import Caller, Channel

logger = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "idem-gateway:exchange:"
INPUT_REQUIRED: Final = "input_required"
DEFAULT_TTL: Final = 300.0

Work = Callable[[], Awaitable[dict[str, Any]]]


class AlreadyDelivered(Exception):
    """A re-attached round came for a result another round already took: the caller answers it
    the ordinary way (a keyed call's guard replays it)."""


@dataclass(eq=False)
class _Question:
    method: str
    params: dict[str, Any]
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: dict[str, Any] | None = None
    error: MCPError | None = None


class Exchange:
    """One upstream request of a 2026-07-28 client, across its rounds (see the module docstring)."""

    def __init__(self, token: str, principal: str, identity: tuple[Any, ...] | None, ttl: float) -> None:
        self.token = token
        self.principal = principal
        self.identity = identity  # (tool, key, arguments) of a keyed call, for re-attaching
        self.ttl = ttl
        self._questions: dict[str, _Question] = {}
        self._counter = 0
        self._changed = anyio.Event()
        self._round: Channel | None = None
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self.done = anyio.Event()
        self.delivered = anyio.Event()  # a round took the result (or the error)
        self.activity = anyio.Event()  # replaced whenever a round starts or ends
        self.scope = anyio.CancelScope()

    # ---- the downstream side: the caller's channel ---------------------------------------

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._counter += 1
        key = f"q{self._counter}"
        question = self._questions[key] = _Question(method, params)
        self._wake()
        try:
            await question.answered.wait()
        finally:
            self._questions.pop(key, None)
        if question.error is not None:
            raise question.error
        assert question.answer is not None
        return question.answer

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if self._round is not None:
            await self._round.notify(method, params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self._round is not None:
            await self._round.progress(progress, total, message)

    # ---- the upstream side: rounds -------------------------------------------------------

    def answer(self, responses: Mapping[str, Any] | None) -> None:
        for key, response in (responses or {}).items():
            question = self._questions.get(key)
            if question is not None and not question.answered.is_set() and isinstance(response, dict):
                question.answer = response
                question.answered.set()

    async def round(self, channel: Channel) -> dict[str, Any]:
        """Serve one round: the result if the call ends, else the questions it now waits on."""
        self._round = channel
        self._touch()
        try:
            while True:
                if self.done.is_set():
                    if self.delivered.is_set():
                        raise AlreadyDelivered
                    self.delivered.set()
                    if self._error is not None:
                        raise self._error
                    assert self._result is not None
                    return self._result
                asked = {
                    k: {"method": q.method, "params": q.params}
                    for k, q in self._questions.items()
                    if not q.answered.is_set()
                }
                if asked:
                    return {"resultType": INPUT_REQUIRED, "inputRequests": asked, "requestState": self.token}
                changed = self._changed
                await changed.wait()
        except anyio.get_cancelled_exc_class():
            if not any(not q.answered.is_set() for q in self._questions.values()):
                self.scope.cancel()  # the client gave up while the call was running, as directly
            raise
        finally:
            self._round = None
            self._touch()

    @property
    def attached(self) -> bool:
        return self._round is not None

    def _touch(self) -> None:
        self.activity.set()
        self.activity = anyio.Event()

    async def run(self, work: Work) -> None:
        with self.scope:
            try:
                self._result = await work()
            except Exception as exc:  # handed to whichever round comes for the result
                self._error = exc
        if self.scope.cancelled_caught:
            self._error = MCPError(code=types.REQUEST_TIMEOUT, message="The request was cancelled")
        self.done.set()
        self._wake()

    def expire(self) -> None:
        """Nobody came back: the server's open questions get an error, and it carries on."""
        for question in self._questions.values():
            if not question.answered.is_set():
                question.error = MCPError(types.REQUEST_TIMEOUT, "The client did not answer in time")
                question.answered.set()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class Exchanges:
    """The open exchanges of this process, run in the gateway's task group."""

    def __init__(self, task_group: anyio.abc.TaskGroup, *, ttl: float = DEFAULT_TTL) -> None:
        self._tg = task_group
        self.ttl = ttl
        self._open: dict[str, Exchange] = {}
        self._by_identity: dict[tuple[Any, ...], Exchange] = {}

    @staticmethod
    def owns(request_state: object) -> bool:
        return isinstance(request_state, str) and request_state.startswith(TOKEN_PREFIX)

    def resume(self, request_state: str, principal: str) -> Exchange:
        exchange = self._open.get(request_state)
        if exchange is None or exchange.principal != principal:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message="requestState does not name an open request (it ended, expired, or was "
                "answered by another gateway process); send the request again without it",
            )
        return exchange

    def reattach(self, principal: str, identity: tuple[Any, ...] | None) -> Exchange | None:
        if identity is None:
            return None
        exchange = self._by_identity.get((principal, *identity))
        return exchange if exchange is not None and not exchange.done.is_set() else None

    def start(self, caller: Caller, work: Work, *, identity: tuple[Any, ...] | None = None) -> Exchange:
        """Run ``work`` for ``caller`` in the background; its questions go to the exchange."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        exchange = Exchange(token, caller.principal, identity, self.ttl)
        caller.channel = exchange
        self._open[token] = exchange
        if identity is not None:
            self._by_identity[(caller.principal, *identity)] = exchange
        self._tg.start_soon(self._run, exchange, work)
        return exchange

    async def _run(self, exchange: Exchange, work: Work) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._expire, exchange)
                await exchange.run(work)
                # Keep the result for a client that comes back for it, but not forever.
                with anyio.move_on_after(exchange.ttl):
                    await exchange.delivered.wait()
                tg.cancel_scope.cancel()
        finally:
            self._open.pop(exchange.token, None)
            if exchange.identity is not None:
                key = (exchange.principal, *exchange.identity)
                if self._by_identity.get(key) is exchange:
                    del self._by_identity[key]

    async def _expire(self, exchange: Exchange) -> None:
        while not exchange.done.is_set():
            activity = exchange.activity
            with anyio.move_on_after(exchange.ttl) as idle:
                await activity.wait()
            if idle.cancelled_caught and not exchange.attached:
                exchange.expire()
