"""The MCP conformance suite's server scenarios against our fixture, directly and through the gateway.

Three runs of the suite (``--suite all``, 32 scenarios in 0.1.16) per module, each a few seconds:
against ``examples/everything_server.py`` over streamable HTTP; against the gateway's ``/mcp``
(``serve --transport http``, SQLite store) with the fixture behind it over stdio and every tool
declared read-only; and the same with the fixture's side-effecting tools keyed. Whatever passes
directly must pass through the gateway, except a scenario that calls a keyed tool: the suite sends
no ``idempotency_key``. Node 22 and the suite come from npm into ``.ci/node-cache``; without npm
the tests skip, except in CI where they fail.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conformance.suite import (
    SCENARIO_TOOLS,
    Run,
    collect,
    fixture_manifest,
    fixture_over_http,
    run_suite,
    table,
)
from tests.http.kit import http_gateway
from tests.support import Setup

# The suite runs once per module: its tests share the module's event loop and fixtures.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def direct(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    """The suite against the fixture over HTTP, once for the module."""
    tmp = tmp_path_factory.mktemp("direct")
    async with fixture_over_http(tmp) as fixture:
        yield await run_suite(fixture.url, tmp / "results")


@pytest.mark.node
@on_module_loop
async def test_fixture_passes_every_server_scenario_directly(direct: Run) -> None:
    print("\n" + table({"direct": direct}))
    # server-sse-polling passes with warnings only: its raw POST declares protocol 2025-03-26, and
    # for a client that old the SDK sends no SSE priming event and offers no stream to close.
    assert len(direct.scenarios) >= 32, direct.output
    failing = {name: direct.scenarios[name].reason for name in sorted(direct.failing)}
    assert failing == {}


def test_a_scenario_passes_only_without_a_failed_check_and_a_missing_one_fails(tmp_path: Path) -> None:
    checks = {
        "ping": [{"id": "ping", "status": "SUCCESS"}],
        "server-sse-polling": [{"id": "server-sse-priming-event", "status": "WARNING"}],
        "tools-call-sampling": [
            {"id": "tools-call-sampling", "status": "FAILURE", "errorMessage": "no sampling"}
        ],
    }
    for name, body in checks.items():
        folder = tmp_path / f"server-{name}-2026-01-01T00-00-00-000Z"
        folder.mkdir()
        (folder / "checks.json").write_text(json.dumps(body))
    output = "Failed to run scenario resources-subscribe: Error: MCP error -32601: Method not found\n"
    names = [*checks, "resources-subscribe", "resources-unsubscribe"]

    run = collect("http://127.0.0.1:1/mcp", names, tmp_path, output)

    assert run.passing == {"ping", "server-sse-polling"}
    assert run.scenarios["server-sse-polling"].warnings == 1
    assert run.scenarios["tools-call-sampling"].reason == "tools-call-sampling: no sampling"
    assert run.scenarios["resources-subscribe"].reason == "Error: MCP error -32601: Method not found"
    assert run.scenarios["resources-unsubscribe"].reason.startswith("the suite wrote no checks")


async def through_gateway(tmp: Path, side_effects: bool | str) -> tuple[Run, set[str]]:
    """The suite against the gateway's /mcp, the fixture behind it over stdio.

    Returns the run and the tools the gateway keyed (those whose schema requires our key).
    """
    setup = Setup(tmp, f"sqlite:///{tmp / 'gateway.db'}")
    fixture_manifest(setup.manifests, side_effects=side_effects)
    async with http_gateway(setup, tokens=False) as gateway:
        async with gateway.client(principal=None, mode="legacy") as client:
            tools = (await client.list_tools()).tools
        run = await run_suite(gateway.url, tmp / "results")
    keyed = {t.name for t in tools if "idempotency_key" in (t.input_schema.get("required") or [])}
    return run, keyed


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def read_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, set[str]]:
    """Every tool declared read-only (``[defaults] side_effects = false``): keys out of the picture."""
    return await through_gateway(tmp_path_factory.mktemp("read-only"), False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keyed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, set[str]]:
    """``side_effects = "auto"``: the fixture's tools without ``readOnlyHint`` need our key."""
    return await through_gateway(tmp_path_factory.mktemp("keyed"), "auto")


def lost(direct: Run, through: Run, scenarios: set[str]) -> str:
    """One line per scenario that passes directly and fails through the gateway, with the reason."""
    names = sorted(scenarios & direct.passing - through.passing)
    return "\n".join(f"{name}: {through.scenarios[name].reason}" for name in names)


@pytest.mark.node
@on_module_loop
async def test_every_scenario_that_passes_directly_passes_through_the_gateway(
    direct: Run, read_only: tuple[Run, set[str]]
) -> None:
    through, keyed_tools = read_only
    print("\n" + table({"direct": direct, "through gateway": through}))
    assert keyed_tools == set()
    failures = lost(direct, through, set(direct.scenarios))
    assert not failures, f"lost through the gateway:\n{failures}"
    assert through.passing == direct.passing


@pytest.mark.node
@on_module_loop
async def test_with_keyed_tools_every_scenario_that_needs_no_key_passes_through_the_gateway(
    direct: Run, keyed: tuple[Run, set[str]]
) -> None:
    """A scenario that calls a keyed tool sends no ``idempotency_key``: the gateway must refuse it.

    Every other scenario must pass as it does directly.
    """
    through, keyed_tools = keyed
    needs_key = {name for name, tools in SCENARIO_TOOLS.items() if tools & keyed_tools}
    print("\n" + table({"direct": direct, "keyed gateway": through}))
    print(f"keyed tools: {sorted(keyed_tools)}\nscenarios that cannot pass keyed: {sorted(needs_key)}")
    assert keyed_tools == {
        "test_sampling",
        "test_elicitation",
        "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums",
        "test_elicitation_url",
        "test_update_resource",
        "test_trigger_tool_change",
    }
    failures = lost(direct, through, set(direct.scenarios) - needs_key)
    assert not failures, f"lost through the keyed gateway:\n{failures}"
    # The suite never sends our key, and a keyed tool called without one is refused.
    assert needs_key & through.passing == set()
