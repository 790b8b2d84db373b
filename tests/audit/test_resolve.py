"""An operator settles an unknown outcome: failed releases the key, completed replays a result."""

from __future__ import annotations

import json
from pathlib import Path

from tests.audit.conftest import cli, read_json
from tests.support import Setup, error_code, new_key, outcome, text_of, wait_for

# slow_op without its gate file: outcome unknown. The downstream is deaf to the cancellation
# the timeout sends, so the call it gave up on is known to have run (however late).
MANIFEST = {"server": {"timeout": "3s"}, "deaf": True}


async def _unknown(setup: Setup, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A slow_op call whose downstream timed out, and its refused retry."""
    setup.manifest(**MANIFEST)
    gate = tmp_path / "gate"
    arguments = {"label": "r", "gate_file": str(gate), "idempotency_key": new_key()}
    async with setup.client() as client:
        assert error_code(await client.call_tool("slow_op", arguments)) == "outcome_unknown"
        await wait_for(lambda: len(setup.executions("slow_op")) == 1)
        assert error_code(await client.call_tool("slow_op", arguments)) == "outcome_unknown"
        record = (await read_json(client, f"audit://keys/{arguments['idempotency_key']}"))["record"]
    assert record["state"] == "unknown"
    return gate, arguments


def _resolve(setup: Setup, key: str, *extra: str) -> list[str]:
    where = ["--store", setup.store, "--manifests", str(setup.manifests)]
    return ["resolve", key, "--principal", "local", *where, *extra]


async def test_resolve_failed_releases_the_key_and_the_retry_executes(setup: Setup, tmp_path: Path) -> None:
    gate, arguments = await _unknown(setup, tmp_path)
    key = arguments["idempotency_key"]
    ran = await cli(*_resolve(setup, key, "--as", "failed"))
    assert ran.code == 0, ran.stderr
    gate.touch()
    async with setup.client() as client:
        retry = await client.call_tool("slow_op", arguments)
        assert outcome(retry) == "executed"
        view = await read_json(client, f"audit://keys/{key}")
    assert len(setup.executions("slow_op")) == 2
    assert [e["outcome"] for e in view["events"]] == ["executed", "resolved", "unknown", "unknown"]
    assert view["events"][1]["detail"]["as"] == "failed"

    again = await cli(*_resolve(setup, key, "--as", "failed"))
    assert again.code == 1 and "not unknown" in again.stderr  # it is completed now
    missing = await cli(*_resolve(setup, new_key(), "--as", "failed"))
    assert missing.code == 1 and "no such key" in missing.stderr


async def test_resolve_completed_stores_the_result_and_the_retry_replays_it(
    setup: Setup, tmp_path: Path
) -> None:
    gate, arguments = await _unknown(setup, tmp_path)
    key = arguments["idempotency_key"]
    bad = tmp_path / "bad.json"
    wrong_type = {"content": [{"type": "text", "text": "x"}], "structuredContent": {"result": 5}}
    bad.write_text(json.dumps(wrong_type))
    refused = await cli(*_resolve(setup, key, "--as", "completed", "--result", str(bad)))
    assert refused.code == 1 and "outputSchema" in refused.stderr
    settled = {
        "content": [{"type": "text", "text": "done by the operator"}],
        "structuredContent": {"result": "done by the operator"},
        "isError": False,
    }
    good = tmp_path / "result.json"
    good.write_text(json.dumps(settled))
    ran = await cli(*_resolve(setup, key, "--as", "completed", "--result", str(good)))
    assert ran.code == 0, ran.stderr
    async with setup.client() as client:
        retry = await client.call_tool("slow_op", arguments)
    assert outcome(retry) == "replayed"
    assert retry.structured_content == settled["structuredContent"] and not retry.is_error
    assert text_of(retry) == "done by the operator"
    assert len(setup.executions("slow_op")) == 1
    gate.touch()

    show = await cli("audit", "show", key, "--principal", "local", "--store", setup.store, "--json")
    assert show.code == 0, show.stderr
    body = show.json()
    assert body["record"]["state"] == "completed" and body["record"]["result"] == settled
    assert [e["outcome"] for e in body["events"]] == ["replayed", "resolved", "unknown", "unknown"]
    people = await cli("audit", "events", "--store", setup.store, "--outcome", "resolved")
    assert people.code == 0 and "resolved" in people.stdout and key in people.stdout
    purge = await cli("purge", "--store", setup.store)
    assert purge.code == 0 and purge.stdout.startswith("purged 0 ")
