"""What a client lists through the gateway, against what the downstream lists to a client directly.

The contract: a side-effecting tool gains a required ``idempotency_key`` (the schema below,
exactly) and one sentence in its description, and ``idempotentHint: true``; nothing else of it
changes; a read-only tool is passed through unchanged. ``tool_prefix`` renames, ``expose =
"listed"`` hides, both through ``serve`` and on the call path too.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support import EXAMPLE_SERVER, Setup, new_key, outcome

SENTENCE = (
    "Requires idempotency_key: generate one new unique key (a UUID) for each action you intend, "
    "send the same key again when retrying that same action, and never reuse a key for a different action."
)
KEY_SCHEMA = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_.:-]{16,255}$",
    "minLength": 16,
    "maxLength": 255,
    "description": SENTENCE,
}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")


def wire(tool: Any) -> dict[str, Any]:
    """A listed tool as it went over the wire (fields the server set, nothing defaulted in)."""
    return dict(tool.model_dump(by_alias=True, mode="json", exclude_unset=True))


async def listed(client: Client) -> dict[str, dict[str, Any]]:
    return {t.name: wire(t) for t in (await client.list_tools()).tools}


async def directly(setup: Setup) -> dict[str, dict[str, Any]]:
    """The example server's own listing, to a client that talks to it without the gateway."""
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(EXAMPLE_SERVER)],
        env={**os.environ, "PAYMENTS_LEDGER": str(setup.ledger)},
    )
    async with Client(params, cache=None) as client:
        return await listed(client)


def keyed(tool: dict[str, Any]) -> dict[str, Any]:
    """What the contract says a side-effecting tool becomes through the gateway."""
    out = {**tool}
    out["description"] = f"{tool.get('description', '').rstrip()}\n\n{SENTENCE}".strip()
    schema = {**tool["inputSchema"]}
    properties = dict(schema.get("properties") or {})
    if "idempotency_key" not in properties:  # a natively idempotent tool keeps its own
        properties["idempotency_key"] = KEY_SCHEMA
    schema["properties"] = properties
    required = list(schema.get("required") or [])
    schema["required"] = required if "idempotency_key" in required else [*required, "idempotency_key"]
    out["inputSchema"] = schema
    out["annotations"] = {**(tool.get("annotations") or {}), "idempotentHint": True}
    return out


async def test_side_effecting_tools_gain_exactly_the_key_and_read_only_tools_pass_through_unchanged(
    setup: Setup,
) -> None:
    setup.manifest()
    direct = await directly(setup)
    async with setup.client() as client:
        through = await listed(client)
    assert set(through) == set(direct)
    read_only = {name for name, tool in direct.items() if (tool.get("annotations") or {}).get("readOnlyHint")}
    assert {"list_invoices", "get_invoice", "quote_fee", "echo_meta"} <= read_only
    for name, tool in direct.items():
        expected = tool if name in read_only else keyed(tool)
        assert through[name] == expected, name
    # The one a client writes keys for: a UUID fits, the whole string must match.
    pattern = through["create_invoice"]["inputSchema"]["properties"]["idempotency_key"]["pattern"]
    assert re.fullmatch(pattern.strip("^$"), new_key())
    assert not re.fullmatch(pattern.strip("^$"), "k" * 15) and not re.fullmatch(
        pattern.strip("^$"), "k" * 256
    )
    # A natively idempotent tool keeps its own idempotency_key argument.
    assert (
        through["native_charge"]["inputSchema"]["properties"]["idempotency_key"]
        == (direct["native_charge"]["inputSchema"]["properties"]["idempotency_key"])
    )


async def test_tool_prefix_and_expose_listed_rename_and_hide_through_serve(setup: Setup) -> None:
    setup.manifest(
        server={"tool_prefix": "pay_", "expose": "listed"},
        tools={"create_invoice": {"side_effects": True}, "list_invoices": {"side_effects": False}},
    )
    direct = await directly(setup)
    key = new_key()
    async with setup.client() as client:
        through = await listed(client)
        created = await client.call_tool(
            "pay_create_invoice", {"customer": "acme", "amount": 1, "idempotency_key": key}
        )
        read = await client.call_tool("pay_list_invoices", {})
        hidden = await client.call_tool("pay_send_email", {"to": "a@b", "subject": "s", "body": "b"})
        unprefixed = await client.call_tool(
            "create_invoice", {"customer": "acme", "amount": 1, "idempotency_key": key}
        )
    assert set(through) == {"pay_create_invoice", "pay_list_invoices"}
    assert through["pay_list_invoices"] == {**direct["list_invoices"], "name": "pay_list_invoices"}
    assert through["pay_create_invoice"] == {**keyed(direct["create_invoice"]), "name": "pay_create_invoice"}
    assert outcome(created) == "executed"
    assert not read.is_error and read.structured_content == {"result": [created.structured_content]}
    for refused in (hidden, unprefixed):
        assert refused.is_error and outcome(refused) is None
    assert [x["tool"] for x in setup.executions("create_invoice")] == ["create_invoice"]
    assert setup.executions("send_email") == []
