"""Test kit for approval: a real gateway process over stdio (its log kept), a real ``mcp`` client
whose elicitation callback is a scripted person, and the store read directly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.session import ElicitationFnT
from mcp.client.stdio import stdio_client

from tests.never_twice.kit import events, record, sql
from tests.support import Setup

__all__ = ["Person", "Running", "dump", "events", "gateway", "record", "retention_ends", "sql"]

WAIT = 30.0
MODES = ["auto", "legacy"]  # a 2026-07-28 client, a 2025-11-25 client


def yes() -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"approve": True})


def no() -> types.ElicitResult:
    return types.ElicitResult(action="decline")


def unticked() -> types.ElicitResult:
    """The form submitted with the box left unticked: a no, too."""
    return types.ElicitResult(action="accept", content={"approve": False})


def dismissed() -> types.ElicitResult:
    return types.ElicitResult(action="cancel")


@dataclass
class Person:
    """The user behind a client: answers each question with the next scripted answer (the last
    one again when the script is used up), recording every question. With ``hold``, an answer
    waits until ``release`` is set, so a test can act while the question is open."""

    script: list[types.ElicitResult] = field(default_factory=lambda: [yes()])
    hold: bool = False
    questions: list[types.ElicitRequestFormParams] = field(default_factory=list)
    release: anyio.Event = field(default_factory=anyio.Event)
    _asked: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams), params
        self.questions.append(params)
        self._asked.set()
        self._asked = anyio.Event()
        answer = self.script[min(len(self.questions), len(self.script)) - 1]
        if self.hold:
            with anyio.fail_after(WAIT):
                await self.release.wait()
        return answer

    async def asked(self, count: int = 1) -> None:
        """Until ``count`` questions have reached this person (bounded)."""
        with anyio.fail_after(WAIT):
            while len(self.questions) < count:
                await self._asked.wait()


@dataclass
class Running:
    client: Client
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@asynccontextmanager
async def gateway(
    setup: Setup,
    *extra: str,
    mode: str,
    person: ElicitationFnT | None,
    name: str = "gateway",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Running]:
    """A gateway subprocess over stdio with a client in ``mode``, ``person`` answering its questions
    (a ``Person`` or any elicitation callback); ``person=None``: a client that does not offer
    elicitation."""
    log = setup.tmp / f"{name}.log"
    params = setup.gateway_params(*extra, env=env)
    with log.open("w") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog),
            mode=mode,
            cache=None,
            elicitation_callback=person,
        ) as client:
            yield Running(client, log)


def dump(result: Any) -> str:
    """A result as the client got it, byte for byte."""
    return json.dumps(result.model_dump(by_alias=True, mode="json", exclude_none=True), sort_keys=True)


async def retention_ends(setup: Setup, key: str) -> None:
    """What the passing of the retention does to a record: its expiry is in the past."""
    await sql(setup.store, "UPDATE idempotency_records SET expires_at = 1 WHERE key = :k", {"k": key})


async def poll(check: Callable[[], Awaitable[bool]], *, interval: float = 0.02) -> None:
    """Until ``check`` (of the store, which another process changes) holds; bounded."""
    with anyio.fail_after(WAIT):
        while not await check():  # noqa: ASYNC110 - another process makes it true
            await anyio.sleep(interval)


async def outcomes(setup: Setup, key: str) -> list[str]:
    return [e["outcome"] for e in await events(setup.store, key)]


def approvals_in(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["outcome"] == "approved"]
