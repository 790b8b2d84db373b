"""The MCP conformance suite's server scenarios against our fixture, directly.

One run of the suite (``--suite all``, 32 scenarios in 0.1.16) per module, against
``examples/everything_server.py`` over streamable HTTP. Node 22 and the suite come from npm into
``.ci/node-cache``; without npm the tests skip, except in CI where they fail.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conformance.suite import Run, collect, fixture_over_http, run_suite, table

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
