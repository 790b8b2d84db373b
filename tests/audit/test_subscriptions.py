"""A subscriber to ``audit://keys/{key}`` hears when the record goes from in progress to completed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

from tests.audit.conftest import read_json
from tests.support import Setup, new_key, outcome, wait_for

TIMEOUT = 20.0


def _slow(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    gate = tmp_path / "gate"
    return gate, {"label": "sub", "gate_file": str(gate), "idempotency_key": new_key()}


async def test_legacy_subscriber_is_notified_when_the_record_completes(setup: Setup, tmp_path: Path) -> None:
    setup.manifest()
    gate, arguments = _slow(tmp_path)
    uri = f"audit://keys/{arguments['idempotency_key']}"
    updated = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and str(message.params.uri) == uri:
            updated.set()

    params = setup.gateway_params()
    async with (
        Client(params, mode="legacy", cache=None, message_handler=on_message) as client,
        anyio.create_task_group() as tg,
    ):
        results: list[Any] = []

        async def call() -> None:
            results.append(await client.call_tool("slow_op", arguments))

        tg.start_soon(call)
        await wait_for(lambda: setup.executions("slow_op"), timeout=TIMEOUT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # subscribe_resource is the legacy era's API
            await client.subscribe_resource(uri)
        assert (await read_json(client, uri))["record"]["state"] == "in_progress"
        assert not updated.is_set()
        gate.touch()
        with anyio.fail_after(TIMEOUT):
            await updated.wait()
        assert (await read_json(client, uri))["record"]["state"] == "completed"
    assert outcome(results[0]) == "executed"


async def test_listen_subscriber_is_notified_when_the_record_completes(setup: Setup, tmp_path: Path) -> None:
    setup.manifest()
    gate, arguments = _slow(tmp_path)
    uri = f"audit://keys/{arguments['idempotency_key']}"
    other = f"audit://keys/{new_key()}"
    async with setup.client(mode="2026-07-28") as client, anyio.create_task_group() as tg:
        assert client.protocol_version == "2026-07-28"
        results: list[Any] = []

        async def call() -> None:
            results.append(await client.call_tool("slow_op", arguments))

        tg.start_soon(call)
        await wait_for(lambda: setup.executions("slow_op"), timeout=TIMEOUT)
        async with client.listen(resource_subscriptions=[uri, other]) as subscription:
            assert (await read_json(client, uri))["record"]["state"] == "in_progress"
            gate.touch()
            with anyio.fail_after(TIMEOUT):
                event = await subscription.__anext__()
        assert getattr(event, "uri", None) == uri
        assert (await read_json(client, uri))["record"]["state"] == "completed"
    assert outcome(results[0]) == "executed"
