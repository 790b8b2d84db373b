"""Every audit resource is scoped to the caller: another principal's key reads like a key never used."""

from __future__ import annotations

from tests.audit.conftest import read_json, read_text
from tests.support import Setup, new_key, outcome, resource_text

INVOICE = {"customer": "acme", "amount": 10}


async def test_principal_a_cannot_read_b_keys_events_or_stats(setup: Setup) -> None:
    setup.manifest(tools={"create_invoice": {"cost": 1.0}})
    b_key = new_key()
    async with setup.client(principal="bob") as bob:
        for _ in range(2):
            await bob.call_tool("create_invoice", {**INVOICE, "idempotency_key": b_key})
        own = await read_json(bob, f"audit://keys/{b_key}")
        assert own["record"]["state"] == "completed"
        assert [e["outcome"] for e in own["events"]] == ["replayed", "executed"]

    never = new_key()
    async with setup.client(principal="alice") as alice:
        b_view = await alice.read_resource(f"audit://keys/{b_key}")
        never_view = await alice.read_resource(f"audit://keys/{never}")
        # Byte for byte the same, apart from the URI the caller itself asked for.
        assert resource_text(b_view).encode() == resource_text(never_view).encode()
        assert b_view.model_dump(exclude={"contents"}) == never_view.model_dump(exclude={"contents"})
        assert await read_json(alice, f"audit://keys/{never}") == {"record": None, "events": []}
        assert await read_json(alice, "audit://events") == {"events": []}
        assert await read_json(alice, "audit://tools/create_invoice") == {"events": []}
        stats = await read_json(alice, "audit://stats")
        assert stats["by_outcome"] == {} and stats["duplicates_prevented"] == 0
        assert stats["spend_prevented"] == 0 and stats["unknown_open"] == 0
        assert stats["last_day"]["by_tool"] == {}

        # The same key from alice is alice's own key: it executes, it does not replay bob's call.
        mine = await alice.call_tool("create_invoice", {**INVOICE, "idempotency_key": b_key})
        assert outcome(mine) == "executed"
        events = (await read_json(alice, f"audit://keys/{b_key}"))["events"]
        assert [e["outcome"] for e in events] == ["executed"]
        assert "principal" not in await read_text(alice, "audit://events")
    assert len(setup.executions("create_invoice")) == 2
