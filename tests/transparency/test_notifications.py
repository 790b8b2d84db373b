"""Progress, log messages, list changes and resource updates reach the client through the gateway
as they do directly, in both eras; progress keeps a long call alive past its timeout."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.support import Setup
from tests.transparency.kit import (
    MODES,
    WAIT,
    Answers,
    direct,
    everything_manifest,
    relay_manifest,
    text_of,
    through,
)

pytestmark = pytest.mark.node


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("server", ["everything", "relay"])
async def test_progress_reaches_the_client_that_asked_for_it(setup: Setup, mode: str, server: str) -> None:
    if server == "everything":
        everything_manifest(setup)
        tool, arguments = "trigger-long-running-operation", {"duration": 0.3, "steps": 3}
    else:
        relay_manifest(setup)
        tool, arguments = "progress_for", {"steps": 3}
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with through(setup, mode) as client:
        result = await client.call_tool(tool, arguments, progress_callback=on_progress)
        silent = await client.call_tool(tool, arguments)
    assert not result.is_error and not silent.is_error
    assert [p for p, _ in seen] == [1.0, 2.0, 3.0]
    assert {t for _, t in seen} == {3.0}


@pytest.mark.parametrize("mode", MODES)
async def test_progress_keeps_a_call_alive_past_its_timeout_and_silence_does_not(
    setup: Setup, mode: str, tmp_path: Path
) -> None:
    """timeout = 3s: 40 progress steps 0.1s apart (4s in all) finish; a silent call ends at 3s.
    (A step's gap is a thirtieth of the timeout: a stalled process does not end a talking call.)"""
    relay_manifest(setup, timeout="3s", max_timeout="1m")
    async with through(setup, mode) as client:
        talking = await client.call_tool("progress_for", {"steps": 40, "interval": 0.1})
        silent = await client.call_tool("block", {"gate": str(tmp_path / "never")})
    assert not talking.is_error and text_of(talking) == "done"
    assert silent.is_error and "no result within 3.0s" in text_of(silent)


@pytest.mark.parametrize("mode", MODES)
async def test_log_messages_of_a_call_reach_its_client_at_the_level_it_chose(setup: Setup, mode: str) -> None:
    """2025-11-25: logging/setLevel; 2026-07-28: the per-request log-level opt-in. Same as directly."""
    params = relay_manifest(setup)
    got: dict[str, list[str]] = {}
    for label in ("direct", "gateway"):
        answers = Answers(label)
        connect = direct(params, mode, logging_callback=answers.log) if label == "direct" else None
        async with connect or through(setup, mode, logging_callback=answers.log) as client:
            if mode == "legacy":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    await client.set_logging_level("warning")
                await client.call_tool("log_during_call", {})
            else:
                meta: Any = {types.LOG_LEVEL_META_KEY: "warning"}
                await client.call_tool("log_during_call", {}, meta=meta)
        got[label] = [str(p.level) for p in answers.logs]
    assert got["gateway"] == got["direct"] == ["warning", "error"]


async def test_a_2025_server_logging_outside_any_call_reaches_its_legacy_client(setup: Setup) -> None:
    everything_manifest(setup)
    answers = Answers("logs")
    async with through(setup, "legacy", **answers.callbacks()) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.set_logging_level("debug")
        await client.call_tool("toggle-simulated-logging", {})
        with anyio.fail_after(WAIT):
            while not answers.logs:  # noqa: ASYNC110 - the server logs on its own timer
                await anyio.sleep(0.05)
        await client.call_tool("toggle-simulated-logging", {})
    assert answers.logs[0].level in (
        "debug",
        "info",
        "notice",
        "warning",
        "error",
        "critical",
        "alert",
        "emergency",
    )


@pytest.mark.parametrize("mode", MODES)
async def test_a_tool_added_at_run_time_is_announced_and_callable_without_reconnecting(
    setup: Setup, mode: str
) -> None:
    """The relay server is 2026-07-28 behind the gateway: its change comes on the gateway's own
    subscriptions/listen stream, and the gateway tells its client in the client's era."""
    relay_manifest(setup)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with through(setup, mode, message_handler=on_message) as client:
        if mode == "legacy":
            await client.call_tool("add_tool", {"name": "late_tool"})
            with anyio.fail_after(WAIT):
                await changed.wait()
        else:
            async with client.listen(tools_list_changed=True) as stream:
                await client.call_tool("add_tool", {"name": "late_tool"})
                with anyio.fail_after(WAIT):
                    event = await stream.__anext__()
            assert type(event).__name__ == "ToolsListChanged"
        names = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("late_tool", {})
    assert "late_tool" in names
    assert text_of(result) == "late_tool ran"


@pytest.mark.parametrize("mode", MODES)
async def test_a_resource_subscription_reaches_the_server_and_its_updates_the_client(
    setup: Setup, mode: str
) -> None:
    everything_manifest(setup)
    uri = "demo://resource/static/document/architecture.md"
    updated = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and str(message.params.uri) == uri:
            updated.set()

    async with through(setup, mode, message_handler=on_message) as client:
        if mode == "legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await client.subscribe_resource(uri)
            await client.call_tool("toggle-subscriber-updates", {})
            with anyio.fail_after(WAIT):
                await updated.wait()
        else:
            async with client.listen(resource_subscriptions=[uri]) as stream:
                await client.call_tool("toggle-subscriber-updates", {})
                with anyio.fail_after(WAIT):
                    event = await stream.__anext__()
            assert getattr(event, "uri", None) == uri
        await client.call_tool("toggle-subscriber-updates", {})
