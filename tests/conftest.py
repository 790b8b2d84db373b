"""Shared fixtures.

``postgres_url``: a PostgreSQL server for the whole session. ``store_url``: each test that
takes it runs once per store backend (a SQLite file; a fresh PostgreSQL database).
``setup``: the test kit's world (manifests, ledger, store) on that backend.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pg
import pytest

from tests.support import Setup


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-rounds",
        type=int,
        default=None,
        help="rounds per backend for the chaos test (default: CHAOS_ROUNDS, else a CI-sized run)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Most tests start real gateway and server processes; without cached bytecode each would
    recompile the project's sources (0.6 s of CPU apiece), so let them write it even where the
    environment says not to."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Gateways started by the tests keep their state (the fingerprint secret) under a temporary
    ``XDG_STATE_HOME``, never in the user's own; every gateway of the session shares it, as the
    gateways on one store must."""
    path = tmp_path_factory.mktemp("state-home")
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = saved


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``IDEM_TEST_POSTGRES_URL`` if set (it needs CREATEDB), else a throwaway local cluster.

    Without PostgreSQL binaries the tests that need it are skipped, except in CI (``CI`` set),
    where they fail.
    """
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("psycopg (the [postgres] extra) is not installed")
    url = os.environ.get("IDEM_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = pg.find_bindir()
    if bindir is None:
        _unavailable("no PostgreSQL binaries (initdb) found and IDEM_TEST_POSTGRES_URL is not set")
    cluster = pg.start_cluster(bindir)
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI (``CI`` set) PostgreSQL tests must run, so fail."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


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
