"""Item 5: no principal can make the gateway's memory or disk grow without bound.

Real gateway processes: URIs are capped in length on ``resources/read`` and
``resources/subscribe``, subscriptions per session are capped; a refused call with 3 MB of
arguments leaves a small event (the big value cut, with its length and hash); audit events
older than the retention are swept; a principal past its rate gets ``rate_limited`` with
nothing stored. (Sessions per principal: ``test_http_limits.py``.)
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from sqlalchemy import create_engine, text

from gateway.store import Event, EventQuery
from gateway.store.sql import SqlStore
from tests.security.kit import RawGateway, error_code_of, run_cli
from tests.support import Setup, new_key, text_of, wait_for

MAX_URI_LENGTH = 8192  # gateway.server.limits
MAX_SUBSCRIPTIONS_PER_SESSION = 100
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600


@pytest.fixture
def sqlite_setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    return made


def _events_table_bytes(setup: Setup) -> int:
    engine = create_engine(setup.store)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT coalesce(sum(length(arguments)), 0), count(*) FROM audit_events")
            ).one()
            return int(row[0])
    finally:
        engine.dispose()


def test_uris_are_capped_in_length_and_subscriptions_in_number(sqlite_setup: Setup) -> None:
    with RawGateway(sqlite_setup) as gateway:
        gateway.handshake()
        long_uri = "audit://keys/" + "k" * MAX_URI_LENGTH
        for method in ("resources/read", "resources/subscribe"):
            reply = gateway.request(method, {"uri": long_uri})
            assert reply.get("error", {}).get("code") == INVALID_PARAMS, reply
        for i in range(MAX_SUBSCRIPTIONS_PER_SESSION):
            assert "result" in gateway.request("resources/subscribe", {"uri": f"audit://keys/key-{i:016d}"})
        # Subscribing again to one it has is fine; one more is refused.
        assert "result" in gateway.request(
            "resources/subscribe", {"uri": "audit://keys/key-0000000000000000"}
        )
        over = gateway.request("resources/subscribe", {"uri": "audit://keys/one-too-many-0000"})
        assert over.get("error", {}).get("code") == INVALID_REQUEST, over
        assert gateway.alive()


def test_a_refused_call_with_huge_arguments_leaves_a_small_event(sqlite_setup: Setup) -> None:
    huge = "A" * (3 * 1024 * 1024)
    with RawGateway(sqlite_setup) as gateway:
        gateway.handshake()
        for _ in range(5):  # no key: refused, and audited
            reply = gateway.call_tool("create_invoice", {"customer": "acme", "amount": 1, "memo": huge})
            assert error_code_of(reply) == "idempotency_key_missing"
        events = json.loads(
            gateway.request("resources/read", {"uri": "audit://events"})["result"]["contents"][0]["text"]
        )
    assert len(events["events"]) == 5
    memo = events["events"][0]["arguments"]["memo"]
    digest = hashlib.sha256(huge.encode()).hexdigest()
    assert memo.startswith("A" * 128) and f"{len(huge)} characters, sha256:{digest}" in memo
    assert _events_table_bytes(sqlite_setup) < 5 * 2048  # not 15 MB


async def test_the_sweeper_drops_audit_events_older_than_the_retention(sqlite_setup: Setup) -> None:
    """Which events go is the store's rule (the test above); here: the sweeper applies it."""
    async with sqlite_setup.client("--audit-retention", "1s", "--sweep-interval", "0.2") as client:
        with anyio.fail_after(30):
            refused = await client.call_tool("create_invoice", {"customer": "a", "amount": 1})
            assert (refused.meta or {})["idem-gateway/error"]["code"] == "idempotency_key_missing"  # audited

            def gone() -> bool:
                engine = create_engine(sqlite_setup.store)
                try:
                    with engine.connect() as conn:
                        return int(conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()) == 0
                finally:
                    engine.dispose()

            await wait_for(gone, timeout=30)


async def test_purge_events_deletes_only_events_older_than_the_cutoff(store_url: str) -> None:
    store = SqlStore(store_url)
    await store.open()
    try:
        now = datetime.now(UTC)
        for age_days, key in (
            (100, "old-key-000000001"),
            (91, "old-key-000000002"),
            (1, "new-key-000000001"),
        ):
            await store.append_event(
                Event(
                    at=now - timedelta(days=age_days),
                    principal="p",
                    key=key,
                    server="s",
                    tool="t",
                    outcome="x",
                )
            )
        assert await store.purge_events(now - timedelta(days=90)) == 2
        left = await store.events(EventQuery(principal="p"))
        assert [e.key for e in left] == ["new-key-000000001"]
        assert await store.purge_events(now - timedelta(days=90)) == 0
    finally:
        await store.close()


async def test_purge_drops_audit_events_past_the_retention(sqlite_setup: Setup) -> None:
    store = SqlStore(sqlite_setup.store)
    await store.open()
    now = datetime.now(UTC)
    await store.append_event(
        Event(at=now - timedelta(days=2), principal="p", key=None, server="s", tool="t", outcome="x")
    )
    await store.close()
    ran = await run_cli("purge", "--store", sqlite_setup.store, "--audit-retention", "1d")
    assert ran.code == 0 and "and 1 audit event(s)" in ran.stdout, ran.stderr


async def test_a_principal_over_its_rate_is_refused_with_rate_limited_and_nothing_is_stored(
    sqlite_setup: Setup,
) -> None:
    async with sqlite_setup.client("--rate-limit", "3/h") as client:
        with anyio.fail_after(30):
            started = anyio.current_time()
            for _ in range(3):
                ok = await client.call_tool(
                    "create_invoice", {"customer": "a", "amount": 1, "idempotency_key": new_key()}
                )
                assert not ok.is_error
            stored = await sqlite_setup.record_count()
            limited = await client.call_tool(
                "create_invoice", {"customer": "a", "amount": 1, "idempotency_key": new_key()}
            )
            span = anyio.current_time() - started
            after = await sqlite_setup.record_count()
            read_only = await client.call_tool("list_invoices", {})
    error = (limited.meta or {})["idem-gateway/error"]
    assert error["code"] == "rate_limited" and error["http_status"] == 429
    # 3/h is one token per 1200 s; the bucket refilled for the time since the first call (at
    # most ``span``), so the wait is 1200 s less that, rounded up.
    assert isinstance(error["retry_after_seconds"], int)
    assert 1200 - span <= error["retry_after_seconds"] <= 1200, (error["retry_after_seconds"], span)
    assert limited.is_error and "[rate_limited]" in text_of(limited)
    assert after == stored  # no record, no event
    assert len(sqlite_setup.executions("create_invoice")) == 3
    assert not read_only.is_error  # read-only tools take no token


async def test_a_sessions_subscriptions_are_released_when_it_closes(sqlite_setup: Setup) -> None:
    """In-process (the count is not visible from outside): subscribe, close, nothing is kept."""
    import warnings

    from mcp import Client

    from gateway.audit.resources import install
    from gateway.audit.subscriptions import Subscriptions
    from gateway.manifests import load_manifests
    from gateway.server.app import Gateway
    from gateway.store import open_store

    gateway = Gateway(load_manifests(sqlite_setup.manifests), open_store(sqlite_setup.store))
    install(gateway)
    (subscriptions,) = [
        getattr(listener, "__self__", None)
        for listener in gateway.guard.listeners
        if isinstance(getattr(listener, "__self__", None), Subscriptions)
    ]
    assert isinstance(subscriptions, Subscriptions)
    with anyio.fail_after(60):
        async with gateway.running():
            for _ in range(2):
                async with Client(gateway.server(), mode="legacy", cache=None) as client:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # subscribe_resource is the legacy era's API
                        for i in range(MAX_SUBSCRIPTIONS_PER_SESSION):
                            await client.subscribe_resource(f"audit://keys/key-{i:016d}")
                    assert subscriptions.subscription_count() == MAX_SUBSCRIPTIONS_PER_SESSION
                await wait_for(lambda: subscriptions.subscription_count() == 0, timeout=30)
