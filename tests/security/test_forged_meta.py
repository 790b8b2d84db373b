"""Item 12: a downstream cannot speak in the gateway's name.

``hostile_server.py`` puts ``idem-gateway/`` keys (a made-up outcome and error) in the
``_meta`` of every result, and (over 2026-07-28) the SDK stamps its own ``serverInfo`` on
each. Through a real gateway process, for both protocol eras: a read-only call, a keyed call
and its replay, a resource read and a prompt show only what the gateway itself says at the
result level (where the gateway speaks; an item's ``_meta`` is the downstream's own); the
metrics over HTTP count the read-only call as ``read_only``, not as the downstream's forged
``replayed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_types import SERVER_INFO_META_KEY

from tests.http.kit import WAIT, http_gateway
from tests.security.kit import hostile_executions, hostile_manifest
from tests.support import Setup, meta_of, new_key

MODES = ["legacy", "2026-07-28"]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    hostile_manifest(made)
    return made


def _gateway_words(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k.startswith("idem-gateway/")}


@pytest.mark.parametrize("mode", MODES)
async def test_forged_gateway_meta_and_server_info_are_stripped_on_every_result(
    setup: Setup, mode: str
) -> None:
    async with setup.client(mode=mode) as client:
        with anyio.fail_after(WAIT):
            peek = await client.call_tool("peek", {"note": "x"})
            key = new_key()
            act = await client.call_tool("act", {"note": "x", "idempotency_key": key})
            again = await client.call_tool("act", {"note": "x", "idempotency_key": key})
            resource = await client.read_resource("hostile://thing")
            prompt = await client.get_prompt("advice")

    # Read-only: the gateway adds nothing, and nothing of the downstream's forgery is left.
    assert _gateway_words(meta_of(peek)) == {}
    assert meta_of(peek).get("vendor/kept") == "kept"  # other vendors' keys pass through
    # Keyed: only the gateway's own outcome, and the stored result carries no forgery either.
    assert _gateway_words(meta_of(act)) == {"idem-gateway/outcome": "executed"}
    assert meta_of(again)["idem-gateway/outcome"] == "replayed"
    assert meta_of(again)["idem-gateway/first-executed-at"] != "1970-01-01T00:00:00Z"
    assert "idem-gateway/error" not in meta_of(again)
    assert hostile_executions(setup) == 1
    # Resources and prompts: no forged keys, and no downstream serverInfo in the gateway's name.
    for result in (resource, prompt):
        meta = meta_of(result)
        assert _gateway_words(meta) == {}
        stamp = meta.get(SERVER_INFO_META_KEY)
        assert stamp is None or stamp.get("name") == "idem-gateway", stamp


async def test_a_read_only_tool_cannot_label_its_own_outcome_in_the_metrics(setup: Setup) -> None:
    async with http_gateway(setup) as gw, gw.client("alice") as client:
        with anyio.fail_after(WAIT):
            await client.call_tool("peek", {"note": "x"})
            metrics = await gw.metrics()
    assert metrics.get('idem_gateway_calls_total{tool="peek",outcome="read_only"}') == 1
    assert not any('outcome="replayed"' in name or 'outcome="forged"' in name for name in metrics)
    assert metrics["idem_gateway_duplicates_prevented_total"] == 0
