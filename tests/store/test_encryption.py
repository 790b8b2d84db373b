"""Encryption at rest: stored results and event arguments never reach the database in clear."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.errors import StoreUnavailable
from gateway.store import EventQuery, RecordState, Settled
from gateway.store.cipher import Cipher, CipherError
from gateway.store.sql import SqlStore
from tests.store.test_contract import RETENTION, T0, claim, complete, event
from tests.support import Setup, new_key, outcome, text_of

SECRET = "4242-4242-4242-4242"
RESULT = {"content": [{"type": "text", "text": f"charged card {SECRET}"}]}


def key(n: int) -> str:
    return base64.urlsafe_b64encode(bytes([n]) * 32).decode().rstrip("=")


def cipher(*ids: str) -> Cipher:
    made = Cipher.from_env({"IDEM_GATEWAY_ENCRYPTION_KEYS": ",".join(f"{i}:{key(ord(i[-1]))}" for i in ids)})
    assert made is not None  # keys given: a cipher
    return made


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    import pg

    with pg.fresh_database(request.getfixturevalue("postgres_url")) as found:
        yield found


def raw(url: str) -> str:
    """Everything the database holds for results and event arguments, as text."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(text("SELECT result FROM idempotency_records")).all())
            rows += conn.execute(text("SELECT arguments FROM audit_events")).all()
    finally:
        engine.dispose()
    return "\n".join(str(r[0]) for r in rows)


async def stored(url: str, c: Cipher | None) -> SqlStore:
    store = SqlStore(url, cipher=c)
    await store.open()
    held = (await store.claim(claim())).record
    ev = event(arguments={"card_number": SECRET})
    assert await complete(store, held, result=RESULT, event=ev) is Settled.COMPLETED
    return store


async def test_results_and_event_arguments_are_sealed_and_read_back(url: str) -> None:
    store = await stored(url, cipher("k1"))
    try:
        record = await store.get("alice", "key-0000000000000001")
        assert record is not None and record.result == RESULT
        [ev] = await store.events(EventQuery())
        assert ev.arguments == {"card_number": SECRET}
    finally:
        await store.close()
    assert SECRET not in raw(url)
    assert "enc:v1:k1:" in raw(url)


async def test_keys_rotate_the_newest_seals_and_every_configured_key_opens(url: str) -> None:
    await (await stored(url, cipher("k1"))).close()
    rotated = SqlStore(url, cipher=cipher("k2", "k1"))
    await rotated.open()
    try:
        old = await rotated.get("alice", "key-0000000000000001")
        assert old is not None and old.result == RESULT
        held = (await rotated.claim(claim("key-0000000000000002"))).record
        await complete(rotated, held, result=RESULT)
    finally:
        await rotated.close()
    assert "enc:v1:k2:" in raw(url) and "enc:v1:k1:" in raw(url)


async def test_a_value_without_its_key_or_moved_to_another_row_fails_closed(url: str) -> None:
    await (await stored(url, cipher("k1"))).close()
    for wrong in (None, cipher("k2")):
        store = SqlStore(url, cipher=wrong)
        await store.open()
        try:
            with pytest.raises(StoreUnavailable):
                await store.get("alice", "key-0000000000000001")
        finally:
            await store.close()
    # A sealed result copied onto another principal's row does not open there.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_records SET principal = 'mallory'"))
    engine.dispose()
    store = SqlStore(url, cipher=cipher("k1"))
    await store.open()
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("mallory", "key-0000000000000001")
    finally:
        await store.close()


async def test_values_written_before_encryption_was_turned_on_still_read(url: str) -> None:
    await (await stored(url, None)).close()
    store = SqlStore(url, cipher=cipher("k1"))
    await store.open()
    try:
        record = await store.get("alice", "key-0000000000000001")
        assert record is not None and record.result == RESULT and record.state is RecordState.COMPLETED
        assert record.expires_at == T0 + timedelta(seconds=2) + RETENTION
    finally:
        await store.close()


@pytest.mark.parametrize(
    "value",
    ["k1", "k1:" + key(1)[:10], f"k1:{key(1)},k1:{key(2)}", f"bad id!:{key(1)}", f"k1:{key(1)}=!"],
)
def test_a_bad_key_configuration_is_refused_with_a_reason(value: str) -> None:
    with pytest.raises(CipherError):
        Cipher.from_env({"IDEM_GATEWAY_ENCRYPTION_KEYS": value})


async def test_a_gateway_with_encryption_keys_stores_nothing_in_clear(setup: Setup) -> None:
    setup.manifest(tools={"send_email": {"redact": ["body"]}})
    env = {"IDEM_GATEWAY_ENCRYPTION_KEYS": f"k1:{key(7)}"}
    recipient = "treasurer@example.invalid"
    k = new_key()
    args = {"to": recipient, "subject": "s", "body": SECRET, "idempotency_key": k}
    async with setup.client(env=env) as client:
        first = await client.call_tool("send_email", args)
        again = await client.call_tool("send_email", args)
    assert (outcome(first), outcome(again)) == ("executed", "replayed")
    assert recipient in text_of(first)  # the downstream echoes what redact cannot mask
    assert recipient not in raw(setup.store) and SECRET not in raw(setup.store)
    if setup.store.startswith("sqlite"):
        db = Path(setup.store.removeprefix("sqlite:///"))
        on_disk = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert recipient.encode() not in on_disk and SECRET.encode() not in on_disk
    assert os.environ.get("IDEM_GATEWAY_ENCRYPTION_KEYS") is None
