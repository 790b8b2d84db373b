"""Approval with a client nobody here wrote: the TypeScript SDK's (2025-11-25), answering the
gateway's elicitation from a script, over stdio and over streamable HTTP (the question rides the
call's SSE stream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.http.kit import bearer, http_gateway
from tests.support import Setup, new_key
from tests.ts_client import http, run_ts_client, stdio

pytestmark = pytest.mark.node


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")


def call(key: str, amount: float) -> dict[str, Any]:
    arguments = {"customer": "ts", "amount": amount, "idempotency_key": key}
    return {"op": "tools/call", "name": "create_invoice", "arguments": arguments}


def error(result: dict[str, Any]) -> dict[str, Any]:
    return dict(result["_meta"]["idem-gateway/error"])


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_ts_client_is_asked_once_per_key_and_its_answers_stand(
    setup: Setup, transport: str
) -> None:
    setup.manifest(tools={"create_invoice": {"approve": [{"argument": "amount", "at_least": 50}]}})
    approved, declined, dismissed = new_key(), new_key(), new_key()
    operations = [
        call(approved, 50),  # asked: yes
        call(approved, 50),
        call(declined, 70),  # asked: no
        call(declined, 70),
        call(dismissed, 90),  # asked: dismissed
        call(dismissed, 90),  # asked again: yes
        call(new_key(), 10),  # below the condition: not asked
        {"op": "resources/read", "uri": "audit://stats"},
    ]
    answers = {
        "elicitation": [
            {"action": "accept", "content": {"approve": True}},
            {"action": "decline"},
            {"action": "cancel"},
            {"action": "accept", "content": {"approve": True}},
        ]
    }
    if transport == "stdio":
        params = setup.gateway_params()
        report = await run_ts_client(
            stdio(params.command, *params.args, cwd=setup.tmp), operations, answers=answers
        )
    else:
        async with http_gateway(setup) as gateway:
            report = await run_ts_client(http(gateway.url, bearer("alice")), operations, answers=answers)
    results = [report.result(i) for i in range(len(operations))]
    outcomes = [r.get("_meta", {}).get("idem-gateway/outcome") for r in results[:7]]
    assert outcomes == ["executed", "replayed", None, None, None, "executed", "executed"]
    assert error(results[2])["code"] == "approval_declined" and results[3] == results[2]
    assert (error(results[4])["code"], error(results[4])["reason"]) == ("approval_unavailable", "cancelled")
    asked = report.requests("elicitation/create")
    assert [r["response"]["action"] for r in asked] == ["accept", "decline", "cancel", "accept"]
    assert all('"create_invoice"' in r["params"]["message"] for r in asked)
    assert len(setup.executions("create_invoice")) == 3
    stats = json.loads(results[7]["contents"][0]["text"])
    assert stats["by_outcome"] == {
        "approval_declined": 2,
        "approval_unavailable": 1,
        "approved": 2,
        "executed": 3,
        "replayed": 1,
    }
