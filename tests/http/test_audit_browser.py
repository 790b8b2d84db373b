"""The audit page in a real browser: Debian's Chromium, driven by Playwright, on a real gateway.

The gateway serves the example payments server over HTTP with bearer tokens; a real MCP client
makes a replay, a conflict and an unknown outcome (a call that times out). Then a person's view:
the page asks for the token, shows what happened, tells one key's story, and an operator
resolves the unknown key through it, which the store and a retry confirm.

``IDEM_AUDIT_SCREENSHOT=docs/audit-page.png`` writes the README's screenshot; otherwise it goes
to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.store import EventQuery, open_store
from tests.http.kit import TOKENS, WAIT, http_gateway
from tests.support import REPO, Setup, error_code, meta_of, new_key, outcome

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CARD = "4242424242424242"
HOSTILE = '<img src=x onerror="window.__pwned = 1">'  # agent-chosen text


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    if not CHROMIUM.exists():
        reason = "Chromium is needed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    monkeypatch.setenv("IDEM_GATEWAY_OPERATORS", "alice")
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest(
        server={"timeout": "3s"},  # slow_op without its gate file: the outcome is unknown
        tools={"create_invoice": {"cost": 0.3, "redact": ["card_number"]}},
    )
    return made


@asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1500})
            page.set_default_timeout(WAIT * 1000)
            yield page
        finally:
            await browser.close()


async def test_a_person_sees_the_audit_and_an_operator_resolves_an_unknown_key_in_the_browser(
    setup: Setup,
) -> None:
    from playwright.async_api import expect

    key, unknown_key = new_key(), new_key()
    slow = {"label": "settle batch 7", "gate_file": str(setup.tmp / "gate"), "idempotency_key": unknown_key}
    invoice = {"customer": "ACME GmbH", "amount": 120.0, "trace_id": HOSTILE, "card_number": CARD}
    invoice["idempotency_key"] = key
    async with http_gateway(setup) as gw:
        async with gw.client("alice") as client:
            with anyio.fail_after(WAIT):
                first = await client.call_tool("create_invoice", invoice)
                replay = await client.call_tool("create_invoice", invoice)
                conflict = await client.call_tool("create_invoice", {**invoice, "amount": 5.0})
                lost = await client.call_tool("slow_op", slow)
        assert (outcome(first), outcome(replay)) == ("executed", "replayed")
        assert (error_code(conflict), error_code(lost)) == ("idempotency_key_conflict", "outcome_unknown")
        invoice_id = first.structured_content["invoice_id"]
        first_at = meta_of(replay)["idem-gateway/first-executed-at"]

        async with browser_page() as page:
            requests: list[Any] = []
            page.on("request", lambda request: requests.append(request))
            with anyio.fail_after(WAIT * 3):
                # The page asks for the token once.
                await page.goto(f"{gw.base}/audit")
                await expect(page.locator("#login")).to_be_visible()
                await page.fill("#token", TOKENS["alice"])
                await page.click("#login-form button[type=submit]")
                await expect(page.locator("#who-principal")).to_have_text("alice")
                await expect(page.locator("#who-operator")).to_be_visible()

                # At a glance: one duplicate prevented, its cost, one unknown open.
                card = "#summary [data-stat={}] .value"
                await expect(page.locator(card.format("duplicates_prevented"))).to_have_text("1")
                await expect(page.locator(card.format("spend_prevented"))).to_have_text("0.30")
                await expect(page.locator(card.format("unknown_open"))).to_have_text("1")
                # The chart: this hour's bar holds the prevented duplicate.
                await expect(page.locator('#chart rect.bar[data-duplicates="1"]')).to_have_count(1)

                # Recent events, with the agent's text shown as text and the card number masked.
                rows = page.locator("#events tbody tr")
                await expect(rows).to_have_count(4)
                outcomes = [await r.get_attribute("data-outcome") for r in await rows.all()]
                assert outcomes == ["unknown", "conflict", "replayed", "executed"]
                events_text = await page.locator("#events").inner_text()
                assert json.dumps(HOSTILE)[1:-1] in events_text and '"card_number":"***"' in events_text
                assert await page.locator("#events img").count() == 0

                # Filters: only the replay.
                await page.select_option("#filter-outcome", "replayed")
                await page.click("#filters button[type=submit]")
                await expect(rows).to_have_count(1)
                assert await rows.first.get_attribute("data-outcome") == "replayed"

                # One key's story: first executed at, the stored result, its three calls.
                await rows.first.locator("button.key").click()
                await expect(page.locator("#story-key")).to_have_text(key)
                first_cell = page.locator('#story tr[data-field="first executed at"] td')
                await expect(first_cell).to_have_text(
                    first_at.replace("T", " ").split(".")[0].removesuffix("Z")
                )
                await expect(page.locator("#story pre.result")).to_contain_text(invoice_id)
                timeline = page.locator("#story .timeline li")
                await expect(timeline).to_have_count(3)
                assert [await li.get_attribute("data-outcome") for li in await timeline.all()] == [
                    "executed",
                    "replayed",
                    "conflict",
                ]

                # The unknown key, with the operator's actions.
                unknown_row = page.locator(f'#unknown tr[data-key="{unknown_key}"]')
                await expect(unknown_row).to_contain_text("slow_op")
                await expect(unknown_row).to_contain_text("timeout")
                await page.select_option("#filter-outcome", "")
                await page.click("#filters button[type=submit]")
                await expect(rows).to_have_count(4)
                shot = Path(os.environ.get("IDEM_AUDIT_SCREENSHOT") or setup.tmp / "audit-page.png")
                if not shot.is_absolute():
                    shot = REPO / shot
                await page.screenshot(path=str(shot), full_page=True)

                # Resolve it through the page: two clicks, then the page says so.
                await unknown_row.locator("button.release").click()
                await unknown_row.locator("button.confirm").click()
                await expect(page.locator("#status")).to_contain_text(f"Resolved {unknown_key} as failed")
                await expect(page.locator("#unknown")).to_have_text("No unknown outcomes.")
                await expect(page.locator(card.format("unknown_open"))).to_have_text("0")

            assert await page.evaluate("window.__pwned") is None  # nothing the agent wrote ran
            assert await page.evaluate("document.cookie") == ""
            html = await page.content()
            assert CARD not in html
            token = TOKENS["alice"]
            assert token not in page.url and all(token not in r.url for r in requests)
            api_calls = [r for r in requests if "/audit/api/" in r.url]
            sent = [(await r.all_headers()).get("authorization") for r in api_calls]
            assert sent.count(f"Bearer {token}") >= 6 and set(sent) == {None, f"Bearer {token}"}
            # Only the first look, before the token was given, went without it (and got a 401).
            assert sent.index(f"Bearer {token}") == sent.count(None) == 1
        assert shot.stat().st_size > 10_000

        # The store agrees, and the released key runs again on retry.
        store = open_store(setup.store)
        await store.open()
        try:
            assert await store.get("alice", unknown_key) is None
            (event,) = await store.events(EventQuery(principal="alice", key=unknown_key, outcome="resolved"))
            assert event.detail["by"] == "alice" and event.detail["as"] == "failed"
        finally:
            await store.close()
        (setup.tmp / "gate").touch()
        async with gw.client("alice") as client:
            with anyio.fail_after(WAIT):
                assert outcome(await client.call_tool("slow_op", slow)) == "executed"
