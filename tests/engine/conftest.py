"""Every engine test runs on each store backend: a SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pg
import pytest

from tests.support import Setup


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    with pg.fresh_database(server) as url:
        yield url


@pytest.fixture
def setup(tmp_path: Path, store_url: str) -> Setup:
    return Setup(tmp_path, store_url)
