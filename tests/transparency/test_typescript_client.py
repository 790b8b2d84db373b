"""A 2025-11-25 client nobody here wrote (the TypeScript SDK's) gets through the gateway what it
gets directly: the same results, the same requests asked of it, the same notifications.

Behind the gateway the fixture speaks 2026-07-28 (its questions are ``input_required`` rounds the
gateway resolves by asking this client) and server-everything 2025-11-25 (its questions are
relayed as requests); the gateway is reached over stdio and over streamable HTTP.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.suite import FIXTURE
from tests.http.kit import bearer, http_gateway
from tests.support import Setup
from tests.transparency.kit import everything_manifest, manifest
from tests.ts_client import Report, http, run_ts_client, stdio

pytestmark = pytest.mark.node

ANSWERS = {
    "sampling": {"text": "a scripted completion", "model": "script-1"},
    "elicitation": {"action": "accept", "content": {"username": "ada", "email": "ada@example.com"}},
    "elicitationUrl": {"action": "accept"},
    "roots": [{"uri": "file:///srv/project", "name": "project"}],
}

FIXTURE_OPERATIONS: list[dict[str, Any]] = [
    {"op": "logging/setLevel", "level": "info"},
    {"op": "tools/call", "name": "test_sampling", "arguments": {"prompt": "write a haiku"}},
    {"op": "tools/call", "name": "test_elicitation", "arguments": {"message": "who?"}},
    {"op": "tools/call", "name": "test_elicitation_url", "arguments": {"url": "https://example.com/consent"}},
    {"op": "tools/call", "name": "test_list_roots"},
    {"op": "roots/set", "roots": [{"uri": "file:///srv/other"}]},
    {"op": "tools/call", "name": "test_list_roots"},
    {"op": "tools/call", "name": "test_tool_with_logging"},
    {"op": "wait", "method": "notifications/message", "count": 3, "timeoutMs": 10000},
    {"op": "tools/call", "name": "test_tool_with_progress", "progress": True},
    {"op": "wait", "method": "notifications/progress", "count": 3, "timeoutMs": 10000},
    {"op": "prompts/get", "name": "test_prompt_with_arguments", "arguments": {"arg1": "a", "arg2": "b"}},
    {"op": "resources/read", "uri": "test://static-text"},
    {
        "op": "completion/complete",
        "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
        "argument": {"name": "arg1", "value": "a"},
    },
    {"op": "tools/call", "name": "no_such_tool"},
]

EVERYTHING_OPERATIONS: list[dict[str, Any]] = [
    {"op": "tools/list"},
    {
        "op": "tools/call",
        "name": "trigger-sampling-request",
        "arguments": {"prompt": "haiku", "maxTokens": 5},
    },
    {"op": "tools/call", "name": "trigger-elicitation-request"},
    {
        "op": "tools/call",
        "name": "trigger-url-elicitation",
        "arguments": {"url": "https://example.com/consent"},
    },
    {
        "op": "tools/call",
        "name": "trigger-long-running-operation",
        "arguments": {"duration": 0.3, "steps": 3},
        "progress": True,
    },
    {"op": "wait", "method": "notifications/progress", "count": 3, "timeoutMs": 10000},
    {"op": "resources/read", "uri": "demo://resource/static/document/features.md"},
    {"op": "prompts/get", "name": "args-prompt", "arguments": {"city": "Lyon"}},
    {
        "op": "completion/complete",
        "ref": {"type": "ref/prompt", "name": "completable-prompt"},
        "argument": {"name": "department", "value": "E"},
    },
]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


async def connect_through(setup: Setup, transport: str) -> Any:
    if transport == "stdio":
        params = setup.gateway_params()
        return stdio(params.command, *params.args, cwd=setup.tmp), None
    context = http_gateway(setup)
    running = await context.__aenter__()
    return http(running.url, bearer("alice")), context


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The server sees the gateway's own progress token (one per downstream request, so two clients'
# tokens never collide on one session); the client gets its progress under its own token.
TOKEN = re.compile(r"\(token [^)]*\)")
# The fixture counts the roots/list_changed notifications it got: a 2026-07-28 server (as the
# fixture is behind the gateway) has no such notification and asks for roots on each request.
ROOTS_CHANGES = "list_changed_notifications"


def scrub(value: Any) -> Any:
    """What legitimately differs: random ids, progress tokens, the fixture's count of roots notifications."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in ("_meta", ROOTS_CHANGES)}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        if ROOTS_CHANGES in value:
            return json.dumps(scrub(json.loads(value)), sort_keys=True)
        return TOKEN.sub("(token)", UUID.sub("<uuid>", value))
    return value


def comparable(report: Report) -> list[Any]:
    """Each operation's outcome, scrubbed; a tool list as its names."""
    out: list[Any] = []
    for entry in report.results:
        if not entry["ok"]:
            out.append(("error", entry["error"].get("code")))
        elif entry["op"] == "tools/list":
            out.append(sorted(t["name"] for t in entry["result"]["tools"]))
        else:
            out.append(scrub(entry["result"] or {}))
    return out


async def run_both(
    setup: Setup, transport: str, direct: dict[str, Any], operations: list[dict[str, Any]]
) -> tuple[Report, Report]:
    directly = await run_ts_client(direct, operations, answers=ANSWERS)
    connect, context = await connect_through(setup, transport)
    try:
        through = await run_ts_client(connect, operations, answers=ANSWERS)
    finally:
        if context is not None:
            await context.__aexit__(None, None, None)
    return directly, through


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_ts_client_gets_from_the_2026_fixture_what_it_gets_directly(
    setup: Setup, transport: str
) -> None:
    manifest(
        setup.manifests,
        "everything",
        {"command": sys.executable, "args": [str(FIXTURE)]},
        defaults={"side_effects": False},
    )
    directly, through = await run_both(
        setup, transport, stdio(sys.executable, str(FIXTURE)), FIXTURE_OPERATIONS
    )
    assert comparable(through)[:-1] == comparable(directly)[:-1]
    assert through.result(len(FIXTURE_OPERATIONS) - 1)["isError"] is True  # the unknown tool, a tool error
    for method in ("sampling/createMessage", "elicitation/create", "roots/list"):
        assert len(through.requests(method)) == len(directly.requests(method)), method
    assert [n["level"] for n in through.notifications("notifications/message")] == [
        n["level"] for n in directly.notifications("notifications/message")
    ]
    assert len(through.notifications("notifications/progress")) == len(
        directly.notifications("notifications/progress")
    )


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_the_ts_client_gets_from_server_everything_what_it_gets_directly(
    setup: Setup, transport: str
) -> None:
    params = everything_manifest(setup)
    directly, through = await run_both(
        setup, transport, stdio(params.command, *params.args), EVERYTHING_OPERATIONS
    )
    assert comparable(through) == comparable(directly)
    for method in ("sampling/createMessage", "elicitation/create"):
        assert (
            len(through.requests(method))
            == len(directly.requests(method))
            == (2 if method == "elicitation/create" else 1)
        )
    assert (
        len(through.notifications("notifications/progress"))
        == len(directly.notifications("notifications/progress"))
        == 3
    )
