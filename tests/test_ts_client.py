"""The TypeScript SDK client driver against the fixture directly, over stdio and streamable HTTP.

Proves the driver before other tests trust it through the gateway: the fixture's sampling,
elicitation (form: accept, decline, cancel; URL), roots (and a roots change), logging and
progress reach the TS client and its scripted answers reach the fixture.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.suite import FIXTURE, fixture_over_http
from tests.ts_client import LATE_PROGRESS, Report, http, run_ts_client, stdio

pytestmark = pytest.mark.node

ANSWERS = {
    "sampling": {"text": "a scripted completion", "model": "script-1"},
    "elicitation": [
        {"action": "accept", "content": {"username": "ada", "email": "ada@example.com"}},
        {"action": "decline"},
        {"action": "cancel"},
    ],
    "elicitationUrl": {"action": "accept"},
    "roots": [{"uri": "file:///srv/project", "name": "project"}],
}

OPERATIONS: list[dict[str, Any]] = [
    {"op": "initialize"},
    {"op": "logging/setLevel", "level": "info"},
    {"op": "tools/call", "name": "test_sampling", "arguments": {"prompt": "write a haiku"}},
    *[{"op": "tools/call", "name": "test_elicitation", "arguments": {"message": "who?"}} for _ in range(3)],
    {"op": "tools/call", "name": "test_elicitation_url", "arguments": {"url": "https://example.com/consent"}},
    {"op": "tools/call", "name": "test_list_roots"},
    {"op": "roots/set", "roots": [{"uri": "file:///srv/other"}]},
    {"op": "tools/call", "name": "test_list_roots"},
    {"op": "tools/call", "name": "test_tool_with_logging"},
    {"op": "wait", "method": "notifications/message", "count": 3, "timeoutMs": 10000},
    {"op": "tools/call", "name": "test_tool_with_progress", "meta": {"progressToken": "progress-1"}},
    {"op": "wait", "method": "notifications/progress", "count": 3, "timeoutMs": 10000},
    {"op": "tools/call", "name": "test_tool_with_progress", "progress": True},
    {
        "op": "tools/call",
        "name": "test_echo_meta",
        "meta": {"traceparent": "00-0af7651916cd43dd-b7ad6b7169203331-01"},
    },
]


@pytest.fixture(params=["stdio", "http"])
async def connect(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    if request.param == "stdio":
        yield stdio(sys.executable, str(FIXTURE))
        return
    async with fixture_over_http(tmp_path) as fixture:
        yield http(fixture.url)


def text(report: Report, index: int) -> str:
    return str(report.result(index)["content"][0]["text"])


async def test_the_ts_client_answers_the_fixtures_requests_and_hears_its_notifications(
    connect: dict[str, Any],
) -> None:
    report = await run_ts_client(connect, OPERATIONS, answers=ANSWERS)

    assert report.result(0)["protocolVersion"] == "2025-11-25"
    assert report.result(0)["serverInfo"]["name"] == "everything-fixture"
    assert report.result(1) == {}
    assert text(report, 2) == "LLM response: a scripted completion"
    [sampling] = report.requests("sampling/createMessage")
    assert sampling["params"]["messages"][0]["content"]["text"] == "write a haiku"

    assert 'action=accept, content={"email": "ada@example.com", "username": "ada"}' in text(report, 3)
    assert "action=decline" in text(report, 4) and "action=cancel" in text(report, 5)
    assert text(report, 6) == "URL elicitation: action=accept"
    modes = [r["params"]["mode"] for r in report.requests("elicitation/create")]
    assert modes == ["form", "form", "form", "url"]
    assert report.requests("elicitation/create")[3]["params"]["url"] == "https://example.com/consent"

    first, second = report.result(7)["structuredContent"], report.result(9)["structuredContent"]
    assert first["roots"] == [{"uri": "file:///srv/project", "name": "project"}]
    assert second["roots"] == [{"uri": "file:///srv/other"}]
    assert second["list_changed_notifications"] == first["list_changed_notifications"] + 1
    assert len(report.requests("roots/list")) == 2

    assert [n["data"] for n in report.notifications("notifications/message")] == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]
    progress = report.notifications("notifications/progress")
    assert [(p["progressToken"], p["progress"]) for p in progress[:3]] == [
        ("progress-1", 0),
        ("progress-1", 50),
        ("progress-1", 100),
    ]
    # "progress": true lets the SDK pick the token (its request id) and route the replies itself.
    sdk_tokens = {p["progressToken"] for p in progress[3:]}
    assert len(progress) == 6 and len(sdk_tokens) == 1 and isinstance(sdk_tokens.pop(), int)
    assert report.result(15)["structuredContent"]["meta"] == {
        "traceparent": "00-0af7651916cd43dd-b7ad6b7169203331-01"
    }
    assert report.errors() == []


async def test_the_ts_client_hears_a_resource_update_and_a_tool_list_change(connect: dict[str, Any]) -> None:
    operations: list[dict[str, Any]] = [
        {"op": "resources/subscribe", "uri": "test://watched-resource"},
        {"op": "tools/call", "name": "test_update_resource"},
        {"op": "wait", "method": "notifications/resources/updated", "timeoutMs": 10000},
        {"op": "tools/call", "name": "test_trigger_tool_change"},
        {"op": "wait", "method": "notifications/tools/list_changed", "timeoutMs": 10000},
        {"op": "tools/list"},
        {
            "op": "completion/complete",
            "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
            "argument": {"name": "arg1", "value": "pa"},
        },
        {"op": "tools/call", "name": "no_such_tool"},
    ]
    report = await run_ts_client(connect, operations)

    assert report.notifications("notifications/resources/updated") == [{"uri": "test://watched-resource"}]
    listed = {t["name"] for t in report.result(5)["tools"]}
    dynamic = report.result(3)["structuredContent"]["listed"]
    assert ("test_dynamic_tool" in listed) is dynamic
    assert report.result(6)["completion"]["values"] == ["paris", "park", "party"]
    assert report.error(7)["code"] == -32602


def test_the_report_drops_only_the_sdks_own_complaint_about_a_final_progress_it_received() -> None:
    final = {"progressToken": 11, "progress": 100, "total": 100, "message": "Completed step 100 of 100"}
    middle = {**final, "progress": 50}

    def complaint(params: dict[str, Any]) -> str:
        return LATE_PROGRESS + json.dumps({"method": "notifications/progress", "params": params})

    received = [{"method": "notifications/progress", "params": final}]
    report = Report({"notifications": received, "errors": [complaint(final), "a real error"]})
    assert report.errors() == ["a real error"]
    # Not the final step, or never received: the complaint stands.
    assert Report({"notifications": received, "errors": [complaint(middle)]}).errors() == [complaint(middle)]
    assert Report({"notifications": [], "errors": [complaint(final)]}).errors() == [complaint(final)]
