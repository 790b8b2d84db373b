"""Shared fixtures. ``postgres_url``: a PostgreSQL server for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pg
import pytest


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``IDEM_TEST_POSTGRES_URL`` if set (it needs CREATEDB), else a throwaway local cluster.

    Without PostgreSQL binaries the tests that need it are skipped, except in CI (``CI`` set),
    where they fail.
    """
    url = os.environ.get("IDEM_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = pg.find_bindir()
    if bindir is None:
        reason = "no PostgreSQL binaries (initdb) found and IDEM_TEST_POSTGRES_URL is not set"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = pg.start_cluster(bindir)
    try:
        yield cluster.url
    finally:
        cluster.stop()
