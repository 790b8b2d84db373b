"""The gateway's own files on this machine, created so that other local users cannot read them.

The SQLite store holds every stored result and audit event, so the state directory is created
``0700`` and the database file ``0600`` before SQLite opens it (SQLite gives its ``-wal`` and
``-shm`` files the database file's mode). An existing file is never re-moded, only warned
about. Commands that only read (``audit``, ``resolve``, ``purge``) never create a store: a
missing SQLite file is an error that says so, where SQLite would quietly create an empty one.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

logger = logging.getLogger(__name__)

__all__ = ["StoreFileError", "require_store", "secure_store", "sqlite_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600


class StoreFileError(Exception):
    """The store URL cannot be used for this command (the message says why and what to do)."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for any other backend.

    Raises ``StoreFileError`` for an in-memory SQLite URL (``sqlite://``, ``sqlite:///``,
    ``:memory:``): such a store vanishes with the process, which is never what is meant.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreFileError(
            "the store URL cannot be parsed: expected sqlite:///PATH or postgresql+psycopg://..."
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise StoreFileError(
            f"{url!r} is an in-memory SQLite store, gone when the process ends: give a file, "
            "e.g. sqlite:///path/to/gateway.db (three slashes, then the path)"
        )
    return Path(database).expanduser()


def secure_store(url: str) -> None:
    """Before ``serve`` opens a SQLite store: its directory ``0700`` and its file ``0600`` if they
    are created now; a warning if an existing one is open to other users."""
    path = sqlite_file(url)
    if path is None:
        return
    _make_private_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        _warn_if_open(path)
    except OSError as exc:
        raise StoreFileError(f"cannot create the store {path}: {exc.strerror or exc}") from None
    else:
        os.fchmod(fd, FILE_MODE)  # whatever the umask said
        os.close(fd)


def require_store(url: str) -> None:
    """For commands that only read or settle: the SQLite file must already exist."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise StoreFileError(
            f"no store at {path}: this command never creates one. Check --store (or IDEM_GATEWAY_STORE); "
            "the gateway creates its store when it first serves"
        )


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        missing.append(parent)
    for new in reversed(missing):
        try:
            new.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it first
        except OSError as exc:
            raise StoreFileError(f"cannot create the state directory {new}: {exc.strerror or exc}") from None
        os.chmod(new, DIR_MODE)  # mkdir's mode is masked by the umask


def _warn_if_open(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        logger.warning(
            "the store %s is open to other users (mode %o): it holds stored results and the audit "
            "trail; chmod 600 it",
            path,
            mode,
        )
