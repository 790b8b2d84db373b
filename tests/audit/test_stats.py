"""``audit://stats`` counts exactly what a scripted sequence of calls did, and the CLI agrees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from tests.audit.conftest import cli, read_json
from tests.support import Setup, error_code, new_key, outcome, parked, wait_for

INVOICE: dict[str, Any] = {"customer": "acme", "amount": 120.5}
EMAIL = {"to": "a@example.com", "subject": "hi", "body": "hello"}
MANIFEST = {
    "server": {"timeout": "3s"},  # slow_op without its gate file times out: an unknown outcome
    "tools": {"create_invoice": {"cost": 0.30}, "send_email": {"cost": 0.05}, "slow_op": {"cost": 9.0}},
}


async def test_stats_count_executions_replays_conflicts_and_unknowns_with_spend_prevented(
    setup: Setup, tmp_path: Path
) -> None:
    setup.manifest(**MANIFEST)
    invoice_key, email_key, slow_key = new_key(), new_key(), new_key()
    gate = tmp_path / "never-opened"
    slow = {"label": "s", "gate_file": str(gate)}
    async with setup.client() as client:
        script: list[tuple[str, dict[str, Any], str | None, str | None]] = [
            ("create_invoice", {**INVOICE, "idempotency_key": invoice_key}, "executed", None),
            ("create_invoice", {**INVOICE, "idempotency_key": invoice_key}, "replayed", None),
            ("create_invoice", {**INVOICE, "idempotency_key": invoice_key}, "replayed", None),
            (
                "create_invoice",
                {**INVOICE, "amount": 1, "idempotency_key": invoice_key},
                None,
                "idempotency_key_conflict",
            ),
            ("send_email", {**EMAIL, "idempotency_key": email_key}, "executed", None),
            ("send_email", {**EMAIL, "idempotency_key": email_key}, "replayed", None),
            ("create_invoice", INVOICE, None, "idempotency_key_missing"),
            ("slow_op", {**slow, "idempotency_key": slow_key}, None, "outcome_unknown"),
            ("slow_op", {**slow, "idempotency_key": slow_key}, None, "outcome_unknown"),
        ]
        for tool, arguments, expected_outcome, expected_error in script:
            result = await client.call_tool(tool, arguments)
            assert outcome(result) == expected_outcome
            assert error_code(result) == expected_error
        stats = await read_json(client, "audit://stats")
        gate.touch()  # let the abandoned downstream call finish

    by_tool = {
        "create_invoice": {"conflict": 1, "executed": 1, "missing_key": 1, "replayed": 2},
        "send_email": {"executed": 1, "replayed": 1},
        # The timed-out call and the refused retry are both unknown outcomes.
        "slow_op": {"unknown": 2},
    }
    counts = {
        "by_outcome": {"conflict": 1, "executed": 2, "missing_key": 1, "replayed": 3, "unknown": 2},
        "by_tool": by_tool,
        "duplicates_prevented": 3,
        "spend_prevented": 0.65,
    }
    windows = {"last_hour": counts, "last_day": counts, "last_week": counts}
    assert stats == {**counts, "unknown_open": 1, **windows}
    assert len(setup.executions("create_invoice")) == 1
    assert len(setup.executions("send_email")) == 1

    ran = await cli("audit", "stats", "--json", "--store", setup.store, "--principal", "local")
    assert ran.code == 0, ran.stderr
    assert ran.json() == stats
    # Every principal at once: only one principal here, so the same numbers.
    ran = await cli("audit", "stats", "--json", "--store", setup.store)
    assert ran.json() == stats
    people = await cli("audit", "stats", "--store", setup.store)
    assert people.code == 0
    assert "duplicates prevented: 3" in people.stdout
    assert "spend prevented: 0.65" in people.stdout


async def test_a_duplicate_sent_while_the_first_call_runs_counts_as_a_prevented_duplicate(
    setup: Setup, tmp_path: Path
) -> None:
    setup.manifest(tools={"slow_op": {"cost": 2.5}})
    gate = tmp_path / "gate"
    arguments = {"label": "w", "gate_file": str(gate), "idempotency_key": new_key()}
    results: list[str | None] = []
    log = tmp_path / "gateway.log"
    async with setup.client(log=log) as client, anyio.create_task_group() as tg:

        async def call() -> None:
            results.append(outcome(await client.call_tool("slow_op", arguments)))

        tg.start_soon(call)
        await wait_for(lambda: len(setup.executions("slow_op")) == 1)
        tg.start_soon(call)  # in_flight = "wait": it waits for the first call's result
        await wait_for(lambda: parked(log) == 1)  # it is waiting, the first call still held
        gate.touch()
    assert sorted(results, key=str) == ["executed", "replayed"]
    async with setup.client() as client:
        stats = await read_json(client, "audit://stats")
    assert stats["duplicates_prevented"] == 1
    assert stats["spend_prevented"] == 2.5
    assert len(setup.executions("slow_op")) == 1


async def test_windows_count_only_events_inside_them_by_the_injected_clock(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.audit.stats import compute_stats
    from gateway.store import Event, open_store

    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    store = open_store(f"sqlite:///{tmp_path / 'clock.db'}")
    await store.open()
    try:
        for age, outcome_ in [
            (timedelta(minutes=5), "replayed"),
            (timedelta(hours=3), "replayed"),
            (timedelta(days=3), "executed"),
        ]:
            await store.append_event(
                Event(
                    at=now - age,
                    principal="p",
                    key="k" * 16,
                    server="s",
                    tool="t",
                    outcome=outcome_,
                    cost=1.5 if outcome_ == "replayed" else None,
                )
            )
        stats = await compute_stats(store, "p", now=now)
    finally:
        await store.close()
    assert stats["by_outcome"] == {"executed": 1, "replayed": 2} and stats["spend_prevented"] == 3.0
    assert stats["last_hour"]["duplicates_prevented"] == 1 and stats["last_hour"]["spend_prevented"] == 1.5
    assert stats["last_day"]["by_outcome"] == {"replayed": 2}
    assert stats["last_week"]["by_outcome"] == {"executed": 1, "replayed": 2}
