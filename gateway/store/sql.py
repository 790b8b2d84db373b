"""``SqlStore``: the ``Store`` on SQLite or PostgreSQL, through one SQLAlchemy Core path.

Every primitive is one short transaction of one or two statements. Writes that change a record
are conditional on ``(principal, key, fence[, state][, lease])`` and the row count decides;
nothing reads and then writes on the strength of what it read.

Where it runs: a SQLite file store runs the hot, non-durable calls (reads, completions, events)
on the event loop's thread when the write lock is free at once (a busy database goes to a worker
thread, which waits); durable writes (claims, take-overs, resolutions) go through a group
commit in a worker thread (``group_commit``), with ``synchronous = FULL`` so they are fsynced
before the call is sent downstream, and concurrent claims share one fsync. Everything else
commits with ``synchronous = NORMAL``: a completion lost in a power cut leaves the claim, whose
lease dies, so the key turns unknown, never executable. PostgreSQL calls over psycopg run on
the event loop through SQLAlchemy's asyncio bridge (``_call``; worker threads for any other
driver, or without greenlet), each session with ``synchronous_commit = on`` whatever the
server's default.

Clocks: on PostgreSQL the database's time is measured (``sync_clock``) and ``now()`` follows it,
so replicas with skewed wall clocks judge leases alike (``clock``).

The SQL stays inside what PostgreSQL-compatible distributed engines (CockroachDB) run:
``INSERT ... ON CONFLICT DO NOTHING``, conditional ``UPDATE``/``DELETE``, row-value ``IN``;
no LISTEN/NOTIFY, no advisory locks, no sequences. Serialization failures (SQLSTATE
40001/40P01) are retried with jittered backoff, since every transaction here is safe to rerun.

Foreign errors (SQLAlchemy, the DBAPI driver, the file system) become
``gateway.errors.StoreUnavailable`` once, in ``_run``; the URL's password never reaches a message.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import await_only, greenlet_spawn
from sqlmodel import SQLModel

from gateway.errors import StoreUnavailable
from gateway.store.cipher import Cipher, CipherError, sealed
from gateway.store.clock import StoreClock
from gateway.store.group_commit import GroupCommit
from gateway.store.records import (
    Claim,
    ClaimResult,
    Event,
    EventQuery,
    Record,
    RecordState,
    Settled,
    late,
)
from gateway.store.tables import EVENTS, RECORDS, SCHEMA_VERSION, SETTINGS, TABLES, VERSION

T = TypeVar("T")

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SECRET_CHECK = "fingerprint_key_check"
_INLINE_FSYNC = 0.001  # seconds: durable commits cheaper than this run on the loop's thread
_DATABASE_TIME = "SELECT extract(epoch from clock_timestamp())"
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_ATTEMPTS = 5

IN_PROGRESS = RecordState.IN_PROGRESS.value
COMPLETED = RecordState.COMPLETED.value
UNKNOWN = RecordState.UNKNOWN.value
EXPIRED = RecordState.EXPIRED.value


def _us(value: datetime) -> int:
    """A datetime as integer microseconds since the epoch (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _us_opt(value: datetime | None) -> int | None:
    return None if value is None else _us(value)


def _dt(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


_R = RECORDS.c
_E = EVENTS.c
_RECORD_COLUMNS = (
    _R.principal,
    _R.key,
    _R.server,
    _R.tool,
    _R.fingerprint,
    _R.state,
    _R.fence,
    _R.lease_owner,
    _R.lease_expires_at,
    _R.created_at,
    _R.expires_at,
    _R.tombstone_until,
    _R.first_executed_at,
    _R.result,
    _R.is_error,
)
_EVENT_COLUMNS = (
    _E.id,
    _E.at,
    _E.principal,
    _E.key,
    _E.server,
    _E.tool,
    _E.outcome,
    _E.fingerprint,
    _E.duration_ms,
    _E.arguments,
    _E.detail,
    _E.cost,
)


def _record(row: Sequence[Any], cipher: Cipher | None = None) -> Record:
    return Record(
        principal=row[0],
        key=row[1],
        server=row[2],
        tool=row[3],
        fingerprint=row[4],
        state=RecordState(row[5]),
        fence=int(row[6]),
        lease_owner=row[7],
        lease_expires_at=_dt(row[8]),
        created_at=_EPOCH + timedelta(microseconds=row[9]),
        expires_at=_EPOCH + timedelta(microseconds=row[10]),
        tombstone_until=_dt(row[11]),
        first_executed_at=_dt(row[12]),
        result=_loads(_opened(row[13], cipher, _result_aad(row[0], row[1]))),
        is_error=bool(row[14]),
    )


def _event(row: Sequence[Any], cipher: Cipher | None = None) -> Event:
    return Event(
        id=int(row[0]),
        at=_EPOCH + timedelta(microseconds=row[1]),
        principal=row[2],
        key=row[3],
        server=row[4],
        tool=row[5],
        outcome=row[6],
        fingerprint=row[7],
        duration_ms=row[8],
        arguments=_loads(_opened(row[9], cipher, _event_aad(row[2]))),
        detail=_loads(row[10]) or {},
        cost=row[11],
    )


def _result_aad(principal: str, key: str) -> str:
    return f"result\x00{principal}\x00{key}"


def _event_aad(principal: str) -> str:
    return f"event\x00{principal}"


def _sealed(value: str | None, cipher: Cipher | None, aad: str) -> str | None:
    return value if value is None or cipher is None else cipher.seal(value, aad)


def _opened(value: str | None, cipher: Cipher | None, aad: str) -> str | None:
    if value is None or not sealed(value):
        return value
    if cipher is None:
        raise CipherError(
            "the store holds encrypted values: set IDEM_GATEWAY_ENCRYPTION_KEYS to the keys that sealed them"
        )
    return cipher.open(value, aad)


def _event_params(ev: Event, cipher: Cipher | None = None) -> dict[str, Any]:
    return {
        "at": _us(ev.at),
        "principal": ev.principal,
        "key": ev.key,
        "server": ev.server,
        "tool": ev.tool,
        "fingerprint": ev.fingerprint,
        "outcome": ev.outcome,
        "duration_ms": ev.duration_ms,
        "arguments": _sealed(_dumps(ev.arguments), cipher, _event_aad(ev.principal)),
        "detail": _dumps(ev.detail) if ev.detail else None,
        "cost": ev.cost,
    }


# Statements are built once; SQLAlchemy caches their compiled form per dialect.
_KEY = and_(_R.principal == bindparam("p"), _R.key == bindparam("k"))
_HELD = and_(_KEY, _R.fence == bindparam("f"))
_HELD_IN_PROGRESS = and_(_HELD, _R.state == IN_PROGRESS)
_HELD_UNKNOWN = and_(_HELD, _R.state == UNKNOWN)
_AS_READ = and_(_HELD, _R.state == bindparam("s"))  # exactly the record the caller read
_NO_LIVE_LEASE = func.coalesce(_R.lease_expires_at, 0) <= bindparam("now")

_GET = select(*_RECORD_COLUMNS).where(_KEY)
_INSERT_EVENT = insert(EVENTS)
_COMPLETED_VALUES: dict[str, Any] = {
    "state": COMPLETED,
    "result": bindparam("v_result"),
    "is_error": bindparam("v_is_error"),
    "first_executed_at": bindparam("v_executed_at"),
    "expires_at": bindparam("v_expires"),
    "tombstone_until": bindparam("v_tombstone"),
    "lease_expires_at": None,
}
_COMPLETE = update(RECORDS).where(_HELD_IN_PROGRESS).values(**_COMPLETED_VALUES)  # the live holder
_COMPLETE_LATE = update(RECORDS).where(_HELD_UNKNOWN).values(**_COMPLETED_VALUES)  # it came back
_RESOLVE = update(RECORDS).where(_AS_READ).values(**_COMPLETED_VALUES)  # an operator
_MARK_UNKNOWN = update(RECORDS).where(_HELD_IN_PROGRESS).values(state=UNKNOWN, lease_expires_at=None)
_MARK_DEAD_UNKNOWN = (
    update(RECORDS).where(_HELD_IN_PROGRESS, _NO_LIVE_LEASE).values(state=UNKNOWN, lease_expires_at=None)
)
_RENEW = update(RECORDS).where(_HELD_IN_PROGRESS).values(lease_expires_at=bindparam("v_lease"))
_RELEASE = delete(RECORDS).where(_HELD_IN_PROGRESS)
_DELETE_AS_READ = delete(RECORDS).where(_AS_READ)
_TAKE_OVER = (
    update(RECORDS)
    .where(_AS_READ, _NO_LIVE_LEASE)
    .values(
        server=bindparam("v_server"),
        tool=bindparam("v_tool"),
        fingerprint=bindparam("v_fingerprint"),
        state=IN_PROGRESS,
        fence=bindparam("v_fence"),
        lease_owner=bindparam("v_owner"),
        lease_expires_at=bindparam("v_lease"),
        created_at=bindparam("v_created"),
        expires_at=bindparam("v_expires"),
        tombstone_until=bindparam("v_tombstone"),
        first_executed_at=None,
        result=None,
        is_error=False,
    )
)

# Purge: only a COMPLETED record's retention ends (an IN_PROGRESS record may still be running,
# whatever its retention says; an UNKNOWN one waits for a settlement). Past it, the record is
# deleted, or kept as an EXPIRED tombstone (result dropped) while tombstone_until lasts.
_COMPLETED_PAST_RETENTION = and_(_R.state == COMPLETED, _R.expires_at <= bindparam("now"))
_TOMBSTONE_OVER = or_(_R.tombstone_until.is_(None), _R.tombstone_until <= bindparam("now"))
_PURGE_DELETE = delete(RECORDS).where(
    tuple_(_R.principal, _R.key).in_(
        select(_R.principal, _R.key)
        .where(
            or_(
                and_(_COMPLETED_PAST_RETENTION, _TOMBSTONE_OVER),
                and_(_R.state == EXPIRED, _TOMBSTONE_OVER),
            )
        )
        .limit(bindparam("batch"))
    )
)
_PURGE_TOMBSTONE = (
    update(RECORDS)
    .where(
        tuple_(_R.principal, _R.key).in_(
            select(_R.principal, _R.key)
            .where(_COMPLETED_PAST_RETENTION, _R.tombstone_until > bindparam("now"))
            .limit(bindparam("batch"))
        )
    )
    .values(state=EXPIRED, result=None, is_error=False, lease_owner=None, lease_expires_at=None)
)


class _Prepared:
    """A Core statement compiled once for one dialect: the driver's SQL and its parameter order.

    The hot path (claim, complete, ...) runs these on a raw pooled DBAPI connection: the same
    SQL SQLAlchemy would send, at a third of the per-call cost of ``Connection.execute``.
    """

    __slots__ = ("defaults", "names", "sql")

    def __init__(self, stmt: Any, dialect: Any, column_keys: Sequence[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        self.defaults: dict[str, Any] = {
            k: v for k, v in compiled.params.items() if not (column_keys and k in column_keys)
        }

    def args(self, params: dict[str, Any]) -> Any:
        merged = {**self.defaults, **params} if self.defaults else params
        return merged if self.names is None else [merged[name] for name in self.names]


_EVENT_KEYS = (
    "at",
    "principal",
    "key",
    "server",
    "tool",
    "fingerprint",
    "outcome",
    "duration_ms",
    "arguments",
    "detail",
    "cost",
)
_RECORD_KEYS = tuple(column.name for column in _RECORD_COLUMNS)


class _Cursor:
    """A DBAPI cursor that runs ``_Prepared`` statements."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def run(self, prepared: _Prepared, params: dict[str, Any]) -> int:
        """Execute; the row count."""
        self._cursor.execute(prepared.sql, prepared.args(params))
        return int(self._cursor.rowcount)

    def one(self, prepared: _Prepared, params: dict[str, Any]) -> Any:
        """Execute; the first row or None."""
        self._cursor.execute(prepared.sql, prepared.args(params))
        return self._cursor.fetchone()


def _claim_or_read(insert_stmt: Any) -> Any:
    """PostgreSQL: the claim's insert, or else the row it conflicted with, in one statement.

    The second half reads with the statement's snapshot, so a row committed by a concurrent
    claim after that snapshot is not seen: then no row comes back, and the caller reads again.
    """
    values = {name: bindparam(name, type_=RECORDS.c[name].type) for name in _RECORD_KEYS}
    ins = (
        insert_stmt.values(**values).returning(*_RECORD_COLUMNS, literal_column("1").label("won")).cte("ins")
    )
    existing = select(*_RECORD_COLUMNS, literal_column("0").label("won")).where(
        _KEY, ~exists(select(literal_column("1")).select_from(ins))
    )
    return union_all(select(*ins.c), existing)


def _with_event(stmt: Any) -> Any:
    """``stmt`` and the insert of its audit event as one statement (PostgreSQL, CockroachDB):
    a data-modifying CTE, so the event is written exactly when the write matched a row."""
    done = stmt.returning(literal_column("1")).cte("done")
    typed = (sql_cast(bindparam(name), EVENTS.c[name].type) for name in _EVENT_KEYS)
    values = select(*typed).select_from(done)
    return insert(EVENTS).from_select(list(_EVENT_KEYS), values)


class _WithEvent:
    """A fenced write and the event it records: one statement and one round trip on PostgreSQL,
    two statements in one transaction on SQLite (which has no DML inside a CTE)."""

    __slots__ = ("combined", "plain")

    def __init__(self, stmt: Any, dialect: Any, *, combine: bool) -> None:
        self.plain = _Prepared(stmt, dialect)
        self.combined = _Prepared(_with_event(stmt), dialect) if combine else None


class _Disconnected(Exception):
    """A pooled PostgreSQL connection turned out dead; the call may be retried on a new one."""


class _Busy(Exception):
    """The SQLite write lock is held elsewhere: retry the call on a worker thread, which waits."""


def new_fence() -> int:
    """A new record's fence: random, so it never repeats a deleted incarnation's (released,
    resolved, purged) even if a clock steps back; a stale holder of an earlier incarnation can
    match it only with probability 2**-62. A take-over uses the previous fence + 1."""
    return secrets.randbits(62) + 1


class SqlStore:
    """The ``Store`` on SQLite (``sqlite:///path.db``) or PostgreSQL (``postgresql+psycopg://...``)."""

    def __init__(
        self, url: str, *, busy_timeout: float = 5.0, pool_size: int = 5, cipher: Cipher | None = None
    ) -> None:
        try:
            self._url: URL = make_url(url)
        except ArgumentError as exc:
            raise StoreUnavailable("the store URL cannot be parsed") from exc
        self._safe_url = self._url.render_as_string(hide_password=True)
        self._password = self._url.password if isinstance(self._url.password, str) else None
        self._busy_timeout = busy_timeout
        self._pool_size = pool_size
        self._cipher = cipher  # results and event arguments sealed at rest when set
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._memory = self._sqlite and self._url.database in (None, "", ":memory:")
        self._file: Path | None = (
            Path(self._url.database).expanduser().absolute()
            if self._sqlite and not self._memory and self._url.database
            else None
        )
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
        self.clock = StoreClock()
        # One in-memory SQLite connection is shared by every thread: run one call at a time.
        self._serial: Any = threading.Lock() if self._memory else nullcontext()
        # SQLite file stores run hot calls on the event loop's thread over this connection,
        # which never waits for a lock (busy_timeout 0): a busy database goes to a worker thread.
        self._inline_conn: Any = None
        # ...and durable writes in rounds on this one (synchronous = FULL), see group_commit.
        self._durable_conn: Any = None
        self._group = GroupCommit(self._durable_round)
        self._commit_time = 0.0  # recent average of a durable commit, in seconds
        self._local = threading.local()
        # Set for PostgreSQL over psycopg, whose calls run on the event loop (see ``_call``).
        self._async_engine: Any = None  # sqlalchemy.ext.asyncio.AsyncEngine, imported when used
        dialect_insert = sqlite_dialect.insert if self._sqlite else pg_dialect.insert
        self._insert_claim = dialect_insert(RECORDS).on_conflict_do_nothing(
            index_elements=["principal", "key"]
        )
        self._insert_version = dialect_insert(VERSION).on_conflict_do_nothing(index_elements=["id"])
        self._insert_setting = dialect_insert(SETTINGS).on_conflict_do_nothing(index_elements=["name"])
        self._driver_error: type[BaseException] = sqlite3.Error
        self._integrity_error: type[BaseException] = sqlite3.IntegrityError
        self._engine = self._create_engine()
        dialect = self._engine.dialect
        self._sql_claim = _Prepared(self._insert_claim, dialect, _RECORD_KEYS)
        self._sql_claim_or_read = (
            None if self._sqlite else _Prepared(_claim_or_read(self._insert_claim), dialect)
        )
        self._sql_event = _Prepared(_INSERT_EVENT, dialect, _EVENT_KEYS)
        self._sql_get = _Prepared(_GET, dialect)
        combine = not self._sqlite
        self._sql_complete = _WithEvent(_COMPLETE, dialect, combine=combine)
        self._sql_complete_late = _WithEvent(_COMPLETE_LATE, dialect, combine=combine)
        self._sql_resolve = _WithEvent(_RESOLVE, dialect, combine=combine)
        self._sql_mark_unknown = _WithEvent(_MARK_UNKNOWN, dialect, combine=combine)
        self._sql_mark_dead_unknown = _WithEvent(_MARK_DEAD_UNKNOWN, dialect, combine=combine)
        self._sql_release = _WithEvent(_RELEASE, dialect, combine=combine)
        self._sql_delete_as_read = _WithEvent(_DELETE_AS_READ, dialect, combine=combine)
        self._sql_renew = _Prepared(_RENEW, dialect)
        self._sql_take_over = _Prepared(_TAKE_OVER, dialect)

    # -- lifecycle -------------------------------------------------------------------------

    def _create_engine(self) -> Engine:
        try:
            if self._sqlite:
                engine = create_engine(
                    self._url,
                    connect_args={
                        "check_same_thread": False,
                        "timeout": self._busy_timeout,
                        "isolation_level": None,  # we emit BEGIN ourselves (see _on_begin)
                    },
                    **(
                        {"poolclass": StaticPool}
                        if self._memory
                        else {"pool_size": self._pool_size, "max_overflow": self._pool_size * 2}
                    ),
                )
                event.listen(engine, "connect", self._on_sqlite_connect)
                event.listen(engine, "begin", self._on_sqlite_begin)
            else:
                options: dict[str, Any] = {
                    "pool_size": self._pool_size,
                    "max_overflow": self._pool_size * 2,
                    # No ping per checkout (a round trip on every call): a connection found dead
                    # is invalidated and the call retried once instead (see _tx and _run).
                    "pool_recycle": 1800,
                    "connect_args": {"connect_timeout": max(2, math.ceil(self._busy_timeout))},
                }
                on_loop = (
                    self._url.get_driver_name() in ("psycopg", "psycopg_async")
                    and importlib.util.find_spec("greenlet") is not None  # SQLAlchemy's asyncio bridge
                )
                if on_loop:
                    from sqlalchemy.ext.asyncio import create_async_engine

                    self._async_engine = create_async_engine(
                        self._url.set(drivername="postgresql+psycopg_async"), **options
                    )
                    engine = self._async_engine.sync_engine
                else:
                    engine = create_engine(self._url, **options)
                event.listen(engine, "connect", self._on_postgres_connect)
        except (ArgumentError, ImportError) as exc:
            raise StoreUnavailable(f"the store {self._safe_url} cannot be used: {exc}") from exc
        dbapi = engine.dialect.loaded_dbapi
        self._driver_error = getattr(dbapi, "Error", sqlite3.Error)
        self._integrity_error = getattr(dbapi, "IntegrityError", sqlite3.IntegrityError)
        return engine

    def _on_sqlite_connect(self, dbapi_connection: Any, _record: Any) -> None:
        """Per connection: wait for locks up to the busy timeout, WAL, fsync only at checkpoints
        (the durable connection turns fsync-at-commit on for itself)."""
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            if not self._memory:
                self._enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @staticmethod
    def _on_postgres_connect(dbapi_connection: Any, _record: Any) -> None:
        """A commit returns only once it is on the server's disk, whatever the server's default:
        a claim that a crash of the database could erase would let a retry run the call again."""
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET synchronous_commit TO on")
        finally:
            cursor.close()
        dbapi_connection.commit()

    def _enable_wal(self, cursor: Any) -> None:
        """Switch to WAL, waiting out a concurrent opener (SQLite answers this pragma "locked"
        at once, without consulting the busy timeout, while another connection switches it)."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)  # blocking is fine: connections are opened in worker threads

    @staticmethod
    def _on_sqlite_begin(conn: Connection) -> None:
        """Write transactions take the write lock up front: no lock upgrade, no deadlock."""
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("idem_write") else "BEGIN")

    async def open(self) -> None:
        await self._call(self._open)
        await self.sync_clock()

    def _open(self) -> None:
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        version = 0
        for attempt in range(_ATTEMPTS):
            try:
                with self._write() as conn:
                    SQLModel.metadata.create_all(conn, tables=list(TABLES), checkfirst=True)
                    conn.execute(self._insert_version, {"id": 1, "version": SCHEMA_VERSION})
                    version = conn.execute(select(VERSION.c.version).where(VERSION.c.id == 1)).scalar_one()
                break
            except (ProgrammingError, IntegrityError):
                # Another replica created the same table between our check and our CREATE.
                if attempt == _ATTEMPTS - 1:
                    raise
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the store {self._safe_url} has schema version {version}, newer than this gateway's "
                f"{SCHEMA_VERSION}: upgrade the gateway"
            )
        if self._file is not None:
            st = self._file.stat()
            self._identity = (st.st_dev, st.st_ino)
        elif not self._sqlite:
            with self._read() as conn:
                if str(conn.exec_driver_sql("SHOW fsync").scalar_one()).lower() == "off":
                    logger.warning(
                        "the PostgreSQL server runs with fsync = off: a crash of the database can lose "
                        "claims, and a retry could then run a call twice. Turn fsync on for production."
                    )

    async def bind_secret(self, check: str) -> bool:
        return await self._call(self._bind_secret, check)

    def _bind_secret(self, check: str) -> bool:
        with self._write() as conn:
            conn.execute(self._insert_setting, {"name": _SECRET_CHECK, "value": check})
            stored = conn.execute(
                select(SETTINGS.c.value).where(SETTINGS.c.name == _SECRET_CHECK)
            ).scalar_one()
        return bool(stored == check)

    async def sync_clock(self) -> None:
        """On a shared server, measure the database's time (see ``clock``); SQLite is local."""
        if not self._sqlite:
            await self._call(self._sync_clock)

    def _sync_clock(self) -> None:
        with self._read() as conn:
            sent = self.clock.local()
            store_time = float(
                conn.exec_driver_sql("SELECT extract(epoch from clock_timestamp())").scalar_one()
            )
            received = self.clock.local()
        self.clock.observe(sent, store_time, received)

    def now(self) -> datetime:
        return self.clock.now()

    async def close(self) -> None:
        for attr in ("_inline_conn", "_durable_conn"):
            conn = getattr(self, attr)
            if conn is not None:
                conn.close()
                setattr(self, attr, None)
        if self._async_engine is not None:
            with anyio.CancelScope(shield=True):
                await self._async_engine.dispose()
        else:
            await anyio.to_thread.run_sync(self._engine.dispose)

    # -- the boundary: threads, transactions, error translation -----------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` (blocking DBAPI code) off the loop's critical path.

        PostgreSQL over psycopg: on the event loop itself, through SQLAlchemy's asyncio bridge
        (``greenlet_spawn``: the same code, its driver calls awaited on the loop), which saves a
        worker thread's two wake-ups per statement, more than the statement's own round trip on
        a busy machine. Shielded, as a worker thread is: a statement once sent is seen through,
        so its caller learns its outcome. Anything else: a worker thread.
        """
        if self._async_engine is not None:
            with anyio.CancelScope(shield=True):
                return cast(T, await greenlet_spawn(self._run, fn, *args))
        return await anyio.to_thread.run_sync(functools.partial(self._run, fn, *args))

    def _backoff(self, seconds: float) -> None:
        """Wait before a retry, from inside ``_run``: on the loop (awaited), or in a worker thread."""
        if self._async_engine is not None:
            await_only(anyio.sleep(seconds))
        else:
            time.sleep(seconds)

    async def _fast(self, fn: Callable[..., T], *args: Any) -> T:
        """A hot-path call. On a SQLite file it runs right here when the lock is free at once.

        A completion or a read is ~0.1 ms of SQLite work (WAL, no fsync at commit), while a
        trip to a worker thread and back costs about as much again; so the work is done on the
        loop's thread, without ever waiting there: if another connection holds the write lock,
        the call is handed to a worker thread that waits up to the busy timeout.
        """
        if self._file is not None:
            self._local.inline = True
            try:
                return self._run(fn, *args)
            except _Busy:
                pass
            finally:
                self._local.inline = False
        return await self._call(fn, *args)

    async def _durable(self, fn: Callable[..., T], *args: Any) -> T:
        """A write that must be on disk before the caller acts on it (see the module doc).

        SQLite: while fsyncs are cheap (their recent average under ``_INLINE_FSYNC``) and no
        group-commit round is under way, the write commits right here on the loop's thread,
        saving a thread hop that costs more than the fsync on a busy machine; when the disk is
        slow, writes go to the group commit, where concurrent ones share a single fsync.
        """
        if self._file is not None:
            if self._group.idle and self._commit_time < _INLINE_FSYNC:
                try:
                    return self._durable_inline(fn, *args)
                except _Busy:
                    pass  # another process holds the write lock: the group commit waits for it
            return cast(T, await self._group.submit(functools.partial(fn, *args)))
        with anyio.CancelScope(shield=True):  # once sent, a claim's outcome must reach its caller
            written = await self._call(self._in_tx, fn, *args)
        return written

    def _durable_inline(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._inline_connection()
        cursor = conn.cursor()
        self._local.inline = True
        started = time.perf_counter()
        try:
            cursor.execute("PRAGMA synchronous = FULL")  # this commit is fsynced
            written = self._run(self._in_tx, fn, *args)
            self._observe_commit(time.perf_counter() - started)
            return written
        finally:
            self._local.inline = False
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

    def _observe_commit(self, seconds: float) -> None:
        self._commit_time = 0.8 * self._commit_time + 0.2 * seconds

    def _in_tx(self, fn: Callable[..., T], *args: Any) -> T:
        with self._tx() as tx:
            return fn(*args, tx)

    def _durable_round(self, ops: Sequence[Callable[[_Cursor], Any]]) -> list[Any]:
        """One group-commit round: every op in one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (fsynced)."""
        return self._run(self._durable_round_once, ops)

    def _durable_round_once(self, ops: Sequence[Callable[[_Cursor], Any]]) -> list[Any]:
        conn = self._durable_connection()
        cursor = conn.cursor()
        try:
            started = time.perf_counter()
            cursor.execute("BEGIN IMMEDIATE")
            tx = _Cursor(cursor)
            values = [op(tx) for op in ops]
            conn.commit()
            self._observe_commit(time.perf_counter() - started)
            return values
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()

    def _durable_connection(self) -> Any:
        if self._durable_conn is None:
            # In WAL mode FULL syncs the log at every commit: the claim is on disk when
            # COMMIT returns (NORMAL would wait for the next checkpoint).
            self._durable_conn = self._kept_connection("PRAGMA synchronous = FULL")
        return self._durable_conn

    def _inline_connection(self) -> Any:
        if self._inline_conn is None:
            self._inline_conn = self._kept_connection("PRAGMA busy_timeout = 0")
        return self._inline_conn

    def _kept_connection(self, pragma: str) -> Any:
        """A connection taken from the pool for the store's life (``close`` ends it), set by ``pragma``."""
        conn = self._engine.raw_connection()
        cursor = conn.cursor()
        try:
            cursor.execute(pragma)
        finally:
            cursor.close()
        return conn

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        for attempt in range(_ATTEMPTS):
            try:
                self._check_identity()
                with self._serial:
                    return fn(*args)
            except StoreUnavailable:
                raise
            except _Disconnected as exc:
                if attempt == 0:
                    continue  # every statement here is conditional: running it again is safe
                raise self._unavailable(exc.__cause__ or exc) from exc
            except CipherError as exc:
                raise StoreUnavailable(str(exc)) from exc
            except (SQLAlchemyError, OSError, self._driver_error, sqlite3.Error) as exc:
                cause = exc.orig if isinstance(exc, DBAPIError) else exc
                if getattr(cause, "sqlstate", None) in _RETRYABLE_SQLSTATES and attempt < _ATTEMPTS - 1:
                    self._backoff(random.uniform(0, 0.005 * 2**attempt))  # jittered
                    continue
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_identity(self) -> None:
        """Fail closed if the SQLite file we opened was deleted or replaced under us: writes
        would go to an unlinked file and, after a restart, every key would run again."""
        if self._identity is None or self._file is None:
            return
        try:
            st = self._file.stat()
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            raise StoreUnavailable(
                f"the store file {self._file} was deleted or replaced while the gateway ran; "
                "nothing runs until the gateway is restarted on the right file"
            )

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if self._password:
            reason = reason.replace(self._password, "***")
        return StoreUnavailable(f"the store {self._safe_url} is unavailable: {reason}")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(idem_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[_Cursor]:
        """One transaction on a raw pooled connection.

        SQLite: ``BEGIN IMMEDIATE`` (or ``BEGIN`` to read) ... ``COMMIT``. PostgreSQL: autocommit,
        every statement its own transaction: every use here is one statement that must be
        atomic on its own (a write and its event are one CTE, ``_WithEvent``), so a call costs
        one round trip per statement and no BEGIN/COMMIT.
        """
        inline = getattr(self._local, "inline", False)
        dbapi_connection = self._inline_connection() if inline else self._engine.raw_connection()
        try:
            if not self._sqlite:
                _driver(dbapi_connection).autocommit = True
            cursor = dbapi_connection.cursor()
            try:
                if self._sqlite:
                    try:
                        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    except sqlite3.OperationalError as exc:
                        if inline and ("locked" in str(exc) or "busy" in str(exc)):
                            raise _Busy from exc
                        raise
                yield _Cursor(cursor)
                if self._sqlite:
                    dbapi_connection.commit()
            except BaseException as exc:
                if self._sqlite:
                    dbapi_connection.rollback()
                elif self._disconnected(exc, dbapi_connection):
                    # The server dropped it (restart, idle timeout, terminated): throw it and its
                    # pooled siblings away; _run retries once on a fresh connection.
                    dbapi_connection.invalidate(exc)
                    self._engine.dispose(close=False)
                    raise _Disconnected from exc
                raise
            finally:
                cursor.close()
        finally:
            if not inline:
                if not self._sqlite and dbapi_connection.is_valid:
                    _driver(dbapi_connection).autocommit = False  # as SQLAlchemy expects it
                dbapi_connection.close()  # back to the pool

    def _disconnected(self, exc: BaseException, connection: Any) -> bool:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        if not isinstance(cause, self._driver_error):
            return False
        return bool(self._engine.dialect.is_disconnect(cast(Any, cause), connection.dbapi_connection, None))

    def _with_event(self, tx: _Cursor, write: _WithEvent, params: dict[str, Any], ev: Event | None) -> bool:
        """Run a fenced write and, if it matched, record ``ev`` with it (atomically)."""
        if ev is None:
            return tx.run(write.plain, params) == 1
        event_params = _event_params(ev, self._cipher)
        if write.combined is not None:
            return tx.run(write.combined, {**params, **event_params}) == 1
        if tx.run(write.plain, params) != 1:
            return False
        tx.run(self._sql_event, event_params)
        return True

    # -- records ---------------------------------------------------------------------------

    async def claim(self, claim: Claim) -> ClaimResult:
        if self._file is not None:
            # Most claims of a key that exists are retries: read it here, on the loop's thread,
            # rather than queue for a durable write that would find it anyway. The insert is
            # still the only arbiter of who holds a new key.
            found = await self._fast(self._get, claim.principal, claim.key)
            if found is not None:
                return ClaimResult(acquired=False, record=found)
        return await self._durable(self._claim, claim, new_fence())

    def _claim(self, c: Claim, fence: int, tx: _Cursor) -> ClaimResult:
        # Timeline of two callers A and B with the same (principal, key):
        #
        #   A: INSERT ... ON CONFLICT DO NOTHING  → 1 row: A holds fence F, commits (fsynced)
        #   B: INSERT ... ON CONFLICT DO NOTHING  → waits for A's row lock (PostgreSQL) or the
        #      write lock (SQLite BEGIN IMMEDIATE), then 0 rows: the key exists
        #   B: SELECT the row                      → A's record (IN_PROGRESS, or later states);
        #      the guard decides: wait, replay, conflict, take over
        #
        # The unique primary key is the only arbiter; nobody reads before inserting, so there
        # is no window in which two callers both see "absent". Under PostgreSQL's READ COMMITTED
        # the row B conflicted with may be gone by the time B reads it (released or purged in
        # between): B then simply tries the insert again.
        params = {
            "principal": c.principal,
            "key": c.key,
            "server": c.server,
            "tool": c.tool,
            "fingerprint": c.fingerprint,
            "state": IN_PROGRESS,
            "fence": fence,
            "lease_owner": c.owner,
            "lease_expires_at": _us(c.lease_expires_at),
            "created_at": _us(c.now),
            "expires_at": _us(c.expires_at),
            "tombstone_until": _us_opt(c.tombstone_until),
            "first_executed_at": None,
            "result": None,
            "is_error": False,
        }
        for _ in range(_ATTEMPTS):
            if self._sql_claim_or_read is not None:
                row = tx.one(self._sql_claim_or_read, {**params, "p": c.principal, "k": c.key})
                if row is not None:
                    won = bool(row[-1])
                    return ClaimResult(
                        acquired=won, record=_claimed(c, fence=fence) if won else _record(row, self._cipher)
                    )
            else:
                try:
                    if tx.run(self._sql_claim, params) == 1:
                        return ClaimResult(acquired=True, record=_claimed(c, fence=fence))
                except (IntegrityError, self._integrity_error):
                    pass  # cannot happen with ON CONFLICT; if it does, the read below settles it
            row = tx.one(self._sql_get, {"p": c.principal, "k": c.key})
            if row is not None:
                record = _record(row, self._cipher)
                # Our own insert, committed before a dropped connection hid its answer (this is
                # a retry, see _run): the fence is this attempt's own random number.
                return ClaimResult(acquired=record.fence == fence, record=record)
        raise StoreUnavailable(f"the store {self._safe_url} kept changing key {c.key!r} during a claim")

    async def get(self, principal: str, key: str) -> Record | None:
        return await self._fast(self._get, principal, key)

    def _get(self, principal: str, key: str) -> Record | None:
        with self._tx(write=False) as tx:
            row = tx.one(self._sql_get, {"p": principal, "k": key})
        return None if row is None else _record(row, self._cipher)

    async def take_over(self, claim: Claim, *, expected: Record) -> Record | None:
        return await self._durable(self._take_over, claim, expected)

    def _take_over(self, c: Claim, expected: Record, tx: _Cursor) -> Record | None:
        params = {
            **_as_read(expected),
            "now": _us(c.now),
            "v_server": c.server,
            "v_tool": c.tool,
            "v_fingerprint": c.fingerprint,
            "v_fence": expected.fence + 1,
            "v_owner": c.owner,
            "v_lease": _us(c.lease_expires_at),
            "v_created": _us(c.now),
            "v_expires": _us(c.expires_at),
            "v_tombstone": _us_opt(c.tombstone_until),
        }
        if tx.run(self._sql_take_over, params) != 1:
            return None
        return _claimed(c, fence=expected.fence + 1)

    async def renew(self, principal: str, key: str, fence: int, lease_expires_at: datetime) -> bool:
        return await self._fast(self._renew, principal, key, fence, lease_expires_at)

    def _renew(self, principal: str, key: str, fence: int, lease_expires_at: datetime) -> bool:
        params = {"p": principal, "k": key, "f": fence, "v_lease": _us(lease_expires_at)}
        with self._tx() as tx:
            return tx.run(self._sql_renew, params) == 1

    async def complete(
        self,
        principal: str,
        key: str,
        fence: int,
        *,
        result: dict[str, Any],
        is_error: bool,
        executed_at: datetime,
        expires_at: datetime,
        tombstone_until: datetime | None,
        event: Event,
    ) -> Settled:
        params = {
            "p": principal,
            "k": key,
            "f": fence,
            "v_result": _sealed(_dumps(result), self._cipher, _result_aad(principal, key)),
            "v_is_error": is_error,
            "v_executed_at": _us(executed_at),
            "v_expires": _us(expires_at),
            "v_tombstone": _us_opt(tombstone_until),
        }
        return await self._fast(self._complete, params, event)

    def _complete(self, params: dict[str, Any], ev: Event) -> Settled:
        with self._tx() as tx:
            if self._with_event(tx, self._sql_complete, params, ev):
                return Settled.COMPLETED
            # Rare: the key was marked unknown under this very fence while the call ran.
            if self._with_event(tx, self._sql_complete_late, params, late(ev, self.now())):
                return Settled.LATE
        return Settled.LOST

    async def mark_unknown(
        self, principal: str, key: str, fence: int, *, event: Event, lease_dead_at: datetime | None = None
    ) -> bool:
        if lease_dead_at is None:
            return await self._fast(
                self._fenced_with_event, self._sql_mark_unknown, principal, key, fence, event
            )
        extra = {"now": _us(lease_dead_at)}
        return await self._fast(
            self._fenced_with_event, self._sql_mark_dead_unknown, principal, key, fence, event, extra
        )

    async def release(self, principal: str, key: str, fence: int, *, event: Event | None) -> bool:
        """Only an IN_PROGRESS record is released: a stored result or an unknown outcome is
        never dropped by a stale holder (the operator uses ``resolve``)."""
        return await self._fast(self._fenced_with_event, self._sql_release, principal, key, fence, event)

    def _fenced_with_event(
        self,
        write: _WithEvent,
        principal: str,
        key: str,
        fence: int,
        ev: Event | None,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        with self._tx() as tx:
            return self._with_event(tx, write, {"p": principal, "k": key, "f": fence, **(extra or {})}, ev)

    async def resolve(
        self,
        principal: str,
        key: str,
        *,
        expected: Record,
        result: dict[str, Any] | None,
        is_error: bool,
        now: datetime,
        event: Event,
    ) -> Record | None:
        return await self._durable(self._resolve, expected, result, is_error, now, event)

    def _resolve(
        self,
        expected: Record,
        result: dict[str, Any] | None,
        is_error: bool,
        now: datetime,
        ev: Event,
        tx: _Cursor,
    ) -> Record | None:
        if result is None:
            return (
                expected if self._with_event(tx, self._sql_delete_as_read, _as_read(expected), ev) else None
            )
        # The result is kept for the tool's retention from now on (the record carries it).
        retention = expected.expires_at - expected.created_at
        expires_at = now + retention
        tombstone = (
            None
            if expected.tombstone_until is None
            else expires_at + (expected.tombstone_until - expected.expires_at)
        )
        executed_at = expected.first_executed_at or now
        params = {
            **_as_read(expected),
            "v_result": _sealed(_dumps(result), self._cipher, _result_aad(expected.principal, expected.key)),
            "v_is_error": is_error,
            "v_executed_at": _us(executed_at),
            "v_expires": _us(expires_at),
            "v_tombstone": _us_opt(tombstone),
        }
        if not self._with_event(tx, self._sql_resolve, params, ev):
            return None
        return replace(
            expected,
            state=RecordState.COMPLETED,
            result=result,
            is_error=is_error,
            first_executed_at=_dt(_us(executed_at)),
            lease_expires_at=None,
            expires_at=_EPOCH + timedelta(microseconds=_us(expires_at)),
            tombstone_until=_dt(_us_opt(tombstone)),
        )

    async def purge(self, now: datetime, *, batch: int = 500) -> int:
        """Retention ends for COMPLETED records only; see ``_PURGE_DELETE``."""
        return await self._call(self._purge, now, batch)

    def _purge(self, now: datetime, batch: int) -> int:
        params = {"now": _us(now), "batch": batch}
        deleted = self._in_batches(_PURGE_DELETE, params, batch)
        self._in_batches(_PURGE_TOMBSTONE, params, batch)
        return deleted

    def _in_batches(self, stmt: Any, params: dict[str, Any], batch: int) -> int:
        """Run a statement that touches at most ``batch`` rows until a run comes back short; the
        rows touched. One short transaction per batch: writers are never blocked for long."""
        total = 0
        while True:
            with self._write() as conn:
                count = conn.execute(stmt, params).rowcount
            total += count
            if count < batch:
                return total

    # -- events ----------------------------------------------------------------------------

    async def append_event(self, event: Event) -> None:
        await self.append_events((event,))

    async def append_events(self, events: Sequence[Event]) -> None:
        await self._fast(self._append_events, events)

    def _append_events(self, events: Sequence[Event]) -> None:
        params = [_event_params(ev, self._cipher) for ev in events]
        with self._tx() as tx:
            for event_params in params:
                tx.run(self._sql_event, event_params)

    async def events(self, query: EventQuery) -> list[Event]:
        return await self._call(self._events, query)

    def _events(self, q: EventQuery) -> list[Event]:
        stmt = select(*_EVENT_COLUMNS)
        if q.principal is not None:
            stmt = stmt.where(_E.principal == q.principal)
        if q.key is not None:
            stmt = stmt.where(_E.key == q.key)
        if q.tool is not None:
            stmt = stmt.where(_E.tool == q.tool)
        if q.outcome is not None:
            stmt = stmt.where(_E.outcome == q.outcome)
        if q.since is not None:
            stmt = stmt.where(_E.at >= _us(q.since))
        stmt = stmt.order_by(_E.at.desc(), _E.id.desc()).limit(q.limit)
        with self._read() as conn:
            return [_event(row, self._cipher) for row in conn.execute(stmt)]

    async def outcome_counts(
        self, principal: str | None, since: datetime | None
    ) -> list[tuple[str, str, int, float]]:
        return await self._call(self._outcome_counts, principal, since)

    def _outcome_counts(
        self, principal: str | None, since: datetime | None
    ) -> list[tuple[str, str, int, float]]:
        stmt = select(_E.tool, _E.outcome, func.count(), func.coalesce(func.sum(_E.cost), 0.0))
        if principal is not None:
            stmt = stmt.where(_E.principal == principal)
        if since is not None:
            stmt = stmt.where(_E.at >= _us(since))
        stmt = stmt.group_by(_E.tool, _E.outcome).order_by(_E.tool, _E.outcome)
        with self._read() as conn:
            return [(tool, outcome, int(n), float(cost)) for tool, outcome, n, cost in conn.execute(stmt)]

    async def count_unknown(self, principal: str | None) -> int:
        return await self._call(self._count_unknown, principal)

    def _count_unknown(self, principal: str | None) -> int:
        stmt = select(func.count()).select_from(RECORDS).where(_R.state == UNKNOWN)
        if principal is not None:
            stmt = stmt.where(_R.principal == principal)
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    async def purge_events(self, before: datetime, *, batch: int = 5000) -> int:
        """Delete audit events older than ``before`` (the audit retention), in batches."""
        return await self._call(self._purge_events, before, batch)

    def _purge_events(self, before: datetime, batch: int) -> int:
        oldest = select(_E.id).where(_E.at < bindparam("before")).limit(bindparam("batch"))
        stmt = delete(EVENTS).where(_E.id.in_(oldest.scalar_subquery()))
        return self._in_batches(stmt, {"before": _us(before), "batch": batch}, batch)


def _driver(pooled: Any) -> Any:
    """The driver's own connection under SQLAlchemy's pool proxy (attributes set on the proxy
    do not reach it)."""
    return pooled.dbapi_connection


def _as_read(record: Record) -> dict[str, Any]:
    """Parameters that match ``record`` only if it is still exactly as read (``_AS_READ``)."""
    return {"p": record.principal, "k": record.key, "f": record.fence, "s": record.state.value}


def _claimed(c: Claim, *, fence: int) -> Record:
    """The record a successful claim or take-over wrote, without reading it back."""
    return Record(
        principal=c.principal,
        key=c.key,
        server=c.server,
        tool=c.tool,
        fingerprint=c.fingerprint,
        state=RecordState.IN_PROGRESS,
        fence=fence,
        lease_owner=c.owner,
        lease_expires_at=_dt(_us(c.lease_expires_at)),
        created_at=_EPOCH + timedelta(microseconds=_us(c.now)),
        expires_at=_EPOCH + timedelta(microseconds=_us(c.expires_at)),
        tombstone_until=_dt(_us_opt(c.tombstone_until)),
    )
