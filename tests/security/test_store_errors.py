"""Item 8: what a client learns of the store is a code and a fixed sentence, never its address;
and a key no store should see (a NUL, a newline) is refused before it gets there.

Real gateway processes: one pointed at a PostgreSQL URL that cannot be reached (with a user,
password, host, port and database name in it); one on each store backend, sent keys with a
NUL or a trailing newline in every place a key can come from, and audit URIs with a NUL.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from tests.security.kit import RawGateway, error_code_of, logged_gateway
from tests.support import Setup, meta_of, new_key

WAIT = 60.0
UNREACHABLE = "postgresql+psycopg://secretuser:hunter2@127.0.0.1:1/secretdb"


async def test_store_unavailable_tells_the_client_the_code_and_nothing_about_the_store(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path, UNREACHABLE)
    setup.manifest()
    log = tmp_path / "gateway.log"
    async with logged_gateway(setup, log, "--store-timeout", "1") as client:
        with anyio.fail_after(WAIT):
            results = [
                await client.call_tool(
                    "create_invoice", {"customer": "a", "amount": 1, "idempotency_key": new_key()}
                )
                for _ in range(3)
            ]
    for result in results:
        error = meta_of(result)["idem-gateway/error"]
        assert error["code"] == "store_unavailable" and error["http_status"] == 503
        shown = json.dumps(result.model_dump(by_alias=True)) + json.dumps(error)
        for detail in ("secretuser", "hunter2", "127.0.0.1", "secretdb", "psycopg", "postgresql", ":1"):
            assert detail not in shown, (detail, shown)
    assert setup.executions("create_invoice") == []  # fail closed: nothing ran
    logged = log.read_text()
    assert "hunter2" not in logged
    assert "secretdb" in logged  # the operator gets the detail, in the log


def _key_from_manifest(setup: Setup) -> None:
    setup.manifest(tools={"consume_message": {"side_effects": True, "key_from": "message_id"}})


BAD_KEYS = ["\x00" + "k" * 20, "k" * 20 + "\x00", "k" * 20 + "\n", "k" * 8 + "\x00" + "k" * 8]


async def test_a_nul_or_newline_in_a_key_is_refused_as_invalid_before_the_store_sees_it(setup: Setup) -> None:
    """On each backend (``setup`` is SQLite, then PostgreSQL, which refuses a NUL in text)."""
    _key_from_manifest(setup)
    with RawGateway(setup) as gateway:
        gateway.handshake()
        for bad in BAD_KEYS:
            by_argument = gateway.call_tool(
                "create_invoice", {"customer": "a", "amount": 1, "idempotency_key": bad}
            )
            by_meta = gateway.call_tool(
                "create_invoice", {"customer": "a", "amount": 1}, meta={"idem-gateway/idempotency-key": bad}
            )
            by_message_id = gateway.call_tool("consume_message", {"message_id": bad, "body": "b"})
            for reply in (by_argument, by_meta, by_message_id):
                assert error_code_of(reply) == "idempotency_key_invalid", reply
        for uri in ("audit://keys/%00", "audit://keys/" + "k" * 20 + "%00", "audit://tools/%00"):
            read = gateway.request("resources/read", {"uri": uri})
            body = json.loads(read["result"]["contents"][0]["text"])
            assert body in ({"record": None, "events": []}, {"events": []}), body
        events = json.loads(
            gateway.request("resources/read", {"uri": "audit://events"})["result"]["contents"][0]["text"]
        )
        assert gateway.alive()
    assert setup.executions("create_invoice") == [] and setup.executions("consume_message") == []
    assert all(
        e["key"] is None for e in events["events"]
    )  # refusals are audited, the bad keys are not stored
    assert len(events["events"]) == 3 * len(BAD_KEYS)
    assert "Traceback" not in gateway.log.read_text()
