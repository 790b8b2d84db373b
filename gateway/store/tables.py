"""The SQL tables behind ``SqlStore``.

Times are integer microseconds since the Unix epoch, UTC (``BigInteger``): the same type on
SQLite and PostgreSQL, compared exactly by the database, and cheap to convert. JSON values
(results, arguments, details) are text written with ``json.dumps``: portable, and the store
never queries inside them.

``schema_version`` holds one row; a later release that changes these tables reads it to
migrate. ``gateway_settings`` holds what every gateway on the store must agree on.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


class IdempotencyRecord(SQLModel, table=True):
    """One key of one principal: the claim, its lease and fence, and the stored result."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        Index("ix_idempotency_records_expires_at", "expires_at"),
        Index("ix_idempotency_records_state", "state"),
    )

    principal: str = Field(sa_column=Column(String(255), primary_key=True))
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    server: str = Field(sa_column=Column(String(255), nullable=False))
    tool: str = Field(sa_column=Column(String(255), nullable=False))
    fingerprint: str = Field(sa_column=Column(String(128), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    fence: int = Field(sa_column=Column(BigInteger, nullable=False))
    lease_owner: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    lease_expires_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    tombstone_until: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    first_executed_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    is_error: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))


class AuditEvent(SQLModel, table=True):
    """One decision on a side-effecting call (append-only)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_principal_at", "principal", "at"),
        Index("ix_audit_events_principal_key", "principal", "key"),
        Index("ix_audit_events_principal_tool", "principal", "tool"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    at: int = Field(sa_column=Column(BigInteger, nullable=False))
    principal: str = Field(sa_column=Column(String(255), nullable=False))
    key: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    server: str = Field(sa_column=Column(String(255), nullable=False))
    tool: str = Field(sa_column=Column(String(255), nullable=False))
    fingerprint: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    outcome: str = Field(sa_column=Column(String(32), nullable=False))
    duration_ms: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    arguments: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    cost: float | None = Field(default=None, sa_column=Column(Float, nullable=True))


class SchemaVersion(SQLModel, table=True):
    """A single row (id = 1): the version of these tables."""

    __tablename__ = "schema_version"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))


class Setting(SQLModel, table=True):
    """Named values the gateways on one store must agree on (the fingerprint secret's check)."""

    __tablename__ = "gateway_settings"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    value: str = Field(sa_column=Column(String(255), nullable=False))


RECORDS: Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
EVENTS: Table = AuditEvent.__table__  # type: ignore[attr-defined]
VERSION: Table = SchemaVersion.__table__  # type: ignore[attr-defined]
SETTINGS: Table = Setting.__table__  # type: ignore[attr-defined]
TABLES: tuple[Table, ...] = (RECORDS, EVENTS, VERSION, SETTINGS)
