"""Tasks (2025-11-25) through the gateway: ids namespaced per server, every task request routed to
the server that made the task, and a keyed task call retried re-attaches to the same task.

The Python SDK client models tasks but does not send them, so the requests go raw, as a
2025-11-25 client (the TypeScript SDK's) sends them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from gateway import _sdk
from tests.support import Setup, new_key
from tests.transparency.kit import everything_manifest, through

pytestmark = pytest.mark.node

TOOL = "simulate-research-query"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


async def test_a_task_is_proxied_under_a_namespaced_id(setup: Setup) -> None:
    everything_manifest(setup)
    async with through(setup, "legacy") as client:
        assert client.server_capabilities.tasks is not None
        send = _sdk.dispatcher(client.session).send_raw_request
        created = await send(
            "tools/call", {"name": TOOL, "arguments": {"topic": "tides"}, "task": {"ttl": 60000}}
        )
        task_id = created["task"]["taskId"]
        got = await send("tasks/get", {"taskId": task_id})
        listed = await send("tasks/list", {})
        result = await send("tasks/result", {"taskId": task_id})
    assert task_id.startswith("everything/")
    assert got["taskId"] == task_id and got["status"] in ("working", "completed")
    assert task_id in [t["taskId"] for t in listed["tasks"]]
    assert "Research Report: tides" in result["content"][0]["text"]


async def test_a_retried_keyed_task_call_reattaches_to_its_task(setup: Setup) -> None:
    everything_manifest(setup, tools={TOOL: {"side_effects": True}})
    arguments: dict[str, Any] = {"topic": "tides", "idempotency_key": new_key()}
    async with through(setup, "legacy") as client:
        send = _sdk.dispatcher(client.session).send_raw_request
        first = await send("tools/call", {"name": TOOL, "arguments": arguments, "task": {"ttl": 60000}})
        retried = await send("tools/call", {"name": TOOL, "arguments": arguments, "task": {"ttl": 60000}})
        listed = await send("tasks/list", {})
        cancelled = await send("tasks/cancel", {"taskId": first["task"]["taskId"]})
    assert retried["task"]["taskId"] == first["task"]["taskId"]
    assert (first["_meta"]["idem-gateway/outcome"], retried["_meta"]["idem-gateway/outcome"]) == (
        "executed",
        "replayed",
    )
    assert len(listed["tasks"]) == 1
    assert cancelled["status"] == "cancelled"


async def test_an_unknown_task_id_is_refused(setup: Setup) -> None:
    everything_manifest(setup)
    async with through(setup, "legacy") as client:
        send = _sdk.dispatcher(client.session).send_raw_request
        with pytest.raises(MCPError) as raised:
            await send("tasks/get", {"taskId": "nobody/123"})
    assert raised.value.code == types.INVALID_PARAMS
