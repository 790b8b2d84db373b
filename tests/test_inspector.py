"""A client nobody here wrote: the MCP Inspector's CLI mode lists and calls tools through the gateway.

The Inspector is installed with npm into ``.ci/node-cache`` (kept between runs, ignored by git;
``IDEM_NODE_CACHE`` moves it). Without npm the test is skipped, except in CI (``CI`` set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import Setup, new_key, npm_package

pytestmark = pytest.mark.node

INSPECTOR = "@modelcontextprotocol/inspector@0.15"


@pytest.fixture(scope="module")
def inspector() -> Path:
    return npm_package(INSPECTOR, ".bin/mcp-inspector")


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest(tools={"create_invoice": {"side_effects": True}, "list_invoices": {"side_effects": False}})
    return made


async def inspect(inspector: Path, setup: Setup, *method: str) -> Any:
    """One Inspector CLI run against a fresh gateway process; its stdout is JSON."""
    params = setup.gateway_params()
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [str(inspector), "--cli", params.command, *params.args, *method],
            cwd=setup.tmp,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def test_the_inspector_lists_the_tools_through_the_gateway(inspector: Path, setup: Setup) -> None:
    listed = await inspect(inspector, setup, "--method", "tools/list")
    tools = {t["name"]: t for t in listed["tools"]}
    assert {"create_invoice", "send_email", "list_invoices"} <= set(tools)
    create = tools["create_invoice"]
    assert "idempotency_key" in create["inputSchema"]["required"]
    assert create["annotations"]["idempotentHint"] is True
    assert "idempotency_key" not in tools["list_invoices"]["inputSchema"].get("properties", {})


async def test_the_inspector_calls_a_tool_once_and_its_retry_replays(inspector: Path, setup: Setup) -> None:
    key = new_key()
    call = ("--method", "tools/call", "--tool-name", "create_invoice", "--tool-arg")
    args = ("customer=inspector", "amount=12.5", f"idempotency_key={key}")
    first = await inspect(inspector, setup, *call, *args)
    again = await inspect(inspector, setup, *call, *args)
    executed = setup.executions("create_invoice")
    assert len(executed) == 1
    assert executed[0]["args"]["customer"] == "inspector" and executed[0]["args"]["amount"] == 12.5
    assert first["structuredContent"] == again["structuredContent"] == executed[0]["result"]

    assert first["_meta"]["idem-gateway/outcome"] == "executed"
    assert again["_meta"]["idem-gateway/outcome"] == "replayed"
