"""Durable records and audit events, behind a small interface (``base.Store``)."""

from gateway.store.base import AuditLog, RecordStore, Store
from gateway.store.records import Claim, ClaimResult, Event, EventQuery, Record, RecordState, Settled

__all__ = [
    "AuditLog",
    "Claim",
    "ClaimResult",
    "Event",
    "EventQuery",
    "Record",
    "RecordState",
    "RecordStore",
    "Settled",
    "Store",
    "open_store",
]


def open_store(url: str, **kwargs: object) -> Store:
    """A store for a SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).

    Encryption at rest follows ``IDEM_GATEWAY_ENCRYPTION_KEYS`` unless ``cipher`` is given
    (a bad key configuration raises ``cipher.CipherError``).
    """
    from gateway.store.cipher import Cipher
    from gateway.store.sql import SqlStore

    if "cipher" not in kwargs:
        kwargs["cipher"] = Cipher.from_env()
    return SqlStore(url, **kwargs)  # type: ignore[arg-type]
