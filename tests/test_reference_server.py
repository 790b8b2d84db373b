"""A published server nobody here wrote, behind the gateway: the Node reference memory server.

It speaks 2025-11-25 only; the clients here speak 2026-07-28 (and, in one case, 2025-11-25): the
gateway bridges the two revisions. Installed with npm into ``.ci/node-cache`` like the Inspector.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import Setup, error_code, new_key, npm_package, outcome, text_of, toml_value

pytestmark = pytest.mark.node

PACKAGE = "@modelcontextprotocol/server-memory@2026.8.31"


@pytest.fixture(scope="module")
def memory_server() -> Path:
    return npm_package(PACKAGE, "@modelcontextprotocol/server-memory/dist/index.js")


@pytest.fixture
def setup(tmp_path: Path, memory_server: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    memory_file = tmp_path / "memory.jsonl"
    (made.manifests / "memory.toml").write_text(
        "[server]\n"
        'name = "memory"\n'
        'command = "node"\n'
        f"args = {toml_value([str(memory_server)])}\n"
        f"env = {toml_value({'MEMORY_FILE_PATH': str(memory_file)})}\n"
    )
    return made


def entities(graph_text: str) -> list[str]:
    return sorted(e["name"] for e in json.loads(graph_text)["entities"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_retry_after_a_later_action_replays_instead_of_redoing(setup: Setup, mode: str) -> None:
    create = {"entities": [{"name": "invoice-7", "entityType": "invoice", "observations": ["EUR 120"]}]}
    create_key, delete_key = new_key(), new_key()
    async with setup.client(mode=mode) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert "idempotency_key" in listed["create_entities"].input_schema["required"]
        assert "idempotency_key" not in (listed["read_graph"].input_schema.get("properties") or {})

        created = await client.call_tool("create_entities", {**create, "idempotency_key": create_key})
        deleted = await client.call_tool(
            "delete_entities", {"entityNames": ["invoice-7"], "idempotency_key": delete_key}
        )
        # The agent never saw the first answer and retries the create: without the gateway the
        # entity would come back; with it, the stored result is replayed and nothing is redone.
        retried = await client.call_tool("create_entities", {**create, "idempotency_key": create_key})
        reused = await client.call_tool("create_entities", {"entities": [], "idempotency_key": create_key})
        graph = await client.call_tool("read_graph", {})

    assert (outcome(created), outcome(deleted), outcome(retried)) == ("executed", "executed", "replayed")
    assert retried.content == created.content
    assert error_code(reused) == "idempotency_key_conflict"
    assert entities(text_of(graph)) == []
