"""The audit page's HTTP side, on a real gateway process: the open page, the hardened headers,
the JSON scoped to the token's principal, and the operator-only, JSON-only resolve.

(What a person sees in a browser is ``test_audit_browser.py``.)
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request

from gateway.server.audit_page import AuditApi, _mask_fields
from gateway.store import Event, EventQuery, open_store
from tests.http.kit import WAIT, HttpGateway, bearer, http_gateway, invoice
from tests.support import Setup, error_code, new_key, outcome

if TYPE_CHECKING:
    from gateway.server.app import Gateway

MANIFEST: dict[str, Any] = {
    "server": {"timeout": "3s"},  # slow_op without its gate file: the outcome is unknown
    "tools": {"create_invoice": {"cost": 0.3, "redact": ["card_number"]}},
}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    monkeypatch.setenv("IDEM_GATEWAY_OPERATORS", "alice")  # bob is not one
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest(**MANIFEST)
    return made


async def make_unknown(gw: HttpGateway, tmp: Path) -> tuple[str, dict[str, Any]]:
    arguments = {"label": "batch 7", "gate_file": str(tmp / "gate"), "idempotency_key": new_key()}
    async with gw.client("alice") as client:
        result = await client.call_tool("slow_op", arguments)
    assert error_code(result) == "outcome_unknown"
    return arguments["idempotency_key"], arguments


@asynccontextmanager
async def store_of(setup: Setup) -> AsyncIterator[Any]:
    store = open_store(setup.store)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_the_page_is_served_without_a_token_under_a_strict_policy(setup: Setup) -> None:
    async with http_gateway(setup) as gw:
        page = await gw.get("/audit")
        script = await gw.get("/audit/static/audit.js")
        style = await gw.get("/audit/static/audit.css")
        posted = await gw.post("/audit")
        api = await gw.get("/audit/api/events")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    for response in (page, script, style):
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in response.headers
    # Nothing inline for the policy to allow: scripts and styles are files.
    html = page.text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/audit/static/audit.js" defer>']
    assert "<style" not in html and not re.search(r"\sstyle=", html) and not re.search(r"\son\w+=", html)
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
    assert posted.status_code == 405
    assert api.status_code == 401  # the data is behind the token


async def test_each_token_reads_only_its_own_principal_and_operators_may_read_others(setup: Setup) -> None:
    key = new_key()
    async with http_gateway(setup) as gw:
        async with gw.client("alice") as client:
            assert outcome(await invoice(client, key)) == "executed"
            assert outcome(await invoice(client, key)) == "replayed"
        as_alice = await gw.get(f"/audit/api/keys/{key}", headers=bearer("alice"))
        as_bob = await gw.get(f"/audit/api/keys/{key}", headers=bearer("bob"))
        never = await gw.get(f"/audit/api/keys/{new_key()}", headers=bearer("bob"))
        bob_events = await gw.get("/audit/api/events", headers=bearer("bob"))
        bob_peeks = await gw.get("/audit/api/events?principal=alice", headers=bearer("bob"))
        operator_reads = await gw.get("/audit/api/events?principal=bob", headers=bearer("alice"))
        me = await gw.get("/audit/api/me", headers=bearer("bob"))
        stats = await gw.get("/audit/api/stats", headers=bearer("alice"))
        series = await gw.get("/audit/api/series?range=week", headers=bearer("alice"))
    assert as_alice.status_code == 200
    story = as_alice.json()
    assert story["record"]["state"] == "completed" and story["record"]["first_executed_at"]
    assert [e["outcome"] for e in story["events"]] == ["replayed", "executed"]
    assert as_bob.status_code == never.status_code == 404 and as_bob.json() == never.json()
    assert bob_events.json() == {"events": []}
    assert bob_peeks.status_code == 403
    assert operator_reads.status_code == 200
    assert me.json() == {"principal": "bob", "operator": False}
    assert stats.json()["duplicates_prevented"] == 1 and stats.json()["spend_prevented"] == 0.3
    week = series.json()
    assert len(week["buckets"]) == 7 and week["buckets"][-1] == {**week["buckets"][-1], "duplicates": 1}
    for response in (as_alice, bob_events, stats):
        assert response.headers["cache-control"] == "no-store"


async def test_resolve_takes_an_operator_a_json_body_and_an_unknown_key(setup: Setup) -> None:
    done = new_key()
    async with http_gateway(setup) as gw:
        key, arguments = await make_unknown(gw, setup.tmp)
        async with gw.client("alice") as client:
            assert outcome(await invoice(client, done)) == "executed"
        body = {"key": key, "as": "failed"}
        by_bob = await gw.post("/audit/api/resolve", json=body, headers=bearer("bob"))
        as_text = await gw.post(
            "/audit/api/resolve",
            content=b'{"key": "%s", "as": "failed"}' % key.encode(),
            headers={**bearer("alice"), "Content-Type": "text/plain"},
        )
        without_token = await gw.post("/audit/api/resolve", json=body)
        not_unknown = await gw.post(
            "/audit/api/resolve", json={"key": done, "as": "failed"}, headers=bearer("alice")
        )
        bad_result = await gw.post(
            "/audit/api/resolve",
            json={"key": key, "as": "completed", "result": {"content": 3}},
            headers=bearer("alice"),
        )
        async with store_of(setup) as store:
            assert (await store.get("alice", key)).state.value == "unknown"  # none of those settled it
        resolved = await gw.post("/audit/api/resolve", json=body, headers=bearer("alice"))
        (setup.tmp / "gate").touch()
        async with gw.client("alice") as client:
            with anyio.fail_after(WAIT):
                retry = await client.call_tool("slow_op", arguments)
    assert (by_bob.status_code, as_text.status_code, without_token.status_code) == (403, 400, 401)
    assert as_text.text == "Invalid Content-Type header"  # a form-like POST never reaches the handler
    assert not_unknown.status_code == 409 and bad_result.status_code == 400
    assert resolved.status_code == 200, resolved.text
    assert outcome(retry) == "executed"  # released: the retry ran
    async with store_of(setup) as store:
        (event,) = await store.events(EventQuery(principal="alice", key=key, outcome="resolved"))
    assert event.detail == {"as": "failed", "previous_state": "unknown", "by": "alice", "via": "audit page"}


def test_redacted_fields_are_masked_at_any_depth_and_inside_json_text() -> None:
    result = {
        "content": [
            {"type": "text", "text": '{"card_number": "4242", "n": 1}'},
            {"type": "text", "text": "plain"},
        ],
        "structuredContent": {"payment": {"card_number": "4242", "amount": 5}},
    }
    masked = _mask_fields(result, frozenset({"card_number"}))
    assert "4242" not in str(masked)
    assert masked["structuredContent"] == {"payment": {"card_number": "***", "amount": 5}}
    assert masked["content"][1]["text"] == "plain"


class _Gateway:
    """What the series endpoint needs of a gateway: a store and a clock (cast to ``Gateway``)."""

    def __init__(self, store: Any, now: datetime) -> None:
        self.store, self.clock, self.catalog = store, (lambda: now), None
        self.specs: list[Any] = []


async def test_the_chart_series_puts_each_prevented_duplicate_in_its_hour(tmp_path: Path) -> None:
    now = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    try:
        for minutes_ago, outcome_name in [
            (5, "replayed"),
            (20, "replayed"),
            (20, "executed"),
            (185, "replayed"),
        ]:
            at = now - timedelta(minutes=minutes_ago)
            await store.append_event(Event(at, "p", "k", "s", "t", outcome_name, cost=0.25))
        gateway = cast("Gateway", _Gateway(store, now))
        api = AuditApi(gateway, host_check=TransportSecurityMiddleware(), operators=frozenset())
        request = Request({"type": "http", "query_string": b"range=day", "headers": []})
        series = await api.series(request, "p")
    finally:
        await store.close()
    buckets = {b["start"]: (b["duplicates"], b["spend"]) for b in series["buckets"]}
    assert len(buckets) == 24 and series["buckets"][-1]["start"] == "2026-03-04T12:00:00Z"
    assert buckets["2026-03-04T12:00:00Z"] == (2, 0.5)
    assert buckets["2026-03-04T09:00:00Z"] == (1, 0.25)
    assert sum(d for d, _ in buckets.values()) == 3
