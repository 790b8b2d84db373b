"""A throwaway PostgreSQL for the benchmark, started the way the tests start theirs (``tests/pg.py``).

One cluster per bench run, shared by the parts that need it and stopped at exit. Unlike the
tests' cluster, commits are synchronous (``synchronous_commit = on`` for the ``postgres`` role,
which outranks the server's command line): a commit waits for its WAL write, as a durable claim
must. ``fsync`` stays off unless ``--pg-fsync`` (then the cluster is restarted with fsync and
full-page writes on); the output says which.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from kit import REPO

sys.path.insert(0, str(REPO / "tests"))
import pg

_cluster: Any = None
_notes: list[str] = []


def _admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(pg._admin_conninfo(url), autocommit=True)


def _restart_with_fsync(cluster: Any) -> None:
    data, log = cluster.root / "data", cluster.root / "log"
    options = f"-h 127.0.0.1 -p {cluster.port} -k {cluster.root} -c fsync=on -c full_page_writes=on"
    subprocess.run(
        pg._as_postgres(
            [str(cluster.bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "restart"]
        ),
        check=True,
        capture_output=True,
    )


def cluster(*, fsync: bool = False) -> tuple[Any, list[str]]:
    """The run's cluster (started on first use) and the notes on its durability settings."""
    global _cluster
    if _cluster is None:
        bindir = pg.find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb) found: install postgresql or skip this part")
        started = pg.start_cluster(bindir)
        atexit.register(started.stop)
        if fsync:
            _restart_with_fsync(started)
        with _admin(started.url) as conn:
            conn.execute("ALTER ROLE postgres SET synchronous_commit = on")
        with _admin(started.url) as conn:
            settings = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("server_version", "synchronous_commit", "fsync", "full_page_writes")
            }
        _notes.append(
            "PostgreSQL {server_version}: throwaway cluster on loopback, "
            "synchronous_commit={synchronous_commit}, "
            "fsync={fsync}, full_page_writes={full_page_writes}".format(**settings)
            + ("" if settings["fsync"] == "on" else " (a commit waits for its WAL write, not for the disk)")
        )
        _cluster = started
    return _cluster, list(_notes)


@contextlib.contextmanager
def database(*, fsync: bool = False) -> Iterator[tuple[str, list[str]]]:
    """A fresh, empty database on the run's cluster: (SQLAlchemy URL, notes)."""
    started, notes = cluster(fsync=fsync)
    with pg.fresh_database(started.url) as url:
        yield url, notes


def connect(url: str) -> Any:
    """A psycopg connection to a database named by a SQLAlchemy URL."""
    import psycopg

    return psycopg.connect(pg._admin_conninfo(url))


def stop() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None
