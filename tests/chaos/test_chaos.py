"""Chaos: concurrent duplicates and retries while gateways, downstreams and the store fail.

On SQLite (two gateway processes, one file) and on PostgreSQL (three ``--stateless`` replicas,
round-robin), see ``harness.py``. At the end, from the ledger: at most one execution per key
(natively idempotent tools: at most one charge), every ``executed`` or ``replayed`` answer is
backed by the ledger, and no key that was only ever answered ``downstream_unavailable`` ran.

One summary line per backend. ``CHAOS_SEED`` replays a run's choices; ``CHAOS_ROUNDS`` or
``--chaos-rounds N`` runs longer (the default fits CI: both backends in under three minutes on
two cores).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pg
import pytest

from tests.chaos.harness import Chaos
from tests.support import Setup

pytestmark = pytest.mark.chaos

DEFAULT_ROUNDS = 6


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture
def rounds(request: pytest.FixtureRequest) -> int:
    option = request.config.getoption("--chaos-rounds")
    return int(option or os.environ.get("CHAOS_ROUNDS") or DEFAULT_ROUNDS)


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[str]:
    with pg.fresh_database(postgres_url) as url:
        yield url


async def _run(chaos: Chaos, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nchaos[{chaos.backend}] seed={chaos.seed} (CHAOS_SEED={chaos.seed} replays the choices)")
    verdict = await chaos.run()
    line = chaos.summary(verdict)
    with capsys.disabled():
        print(line)
    assert verdict.ok, f"{line}\n{chaos.explain(verdict)}"


async def test_chaos_two_gateways_on_one_sqlite_file(
    tmp_path: Path, seed: int, rounds: int, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    await _run(Chaos(setup, "sqlite", replicas=2, rounds=rounds, seed=seed), capsys)


@pytest.mark.postgres
async def test_chaos_three_replicas_on_postgresql(
    tmp_path: Path, pg_store: str, seed: int, rounds: int, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = Setup(tmp_path, pg_store)
    await _run(Chaos(setup, "postgres", replicas=3, rounds=rounds, seed=seed), capsys)
