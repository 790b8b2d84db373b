"""``redact`` arguments and manifest secrets never reach the database, a resource or a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from gateway.audit.redaction import SecretFilter
from tests.audit.conftest import logged_client, read_text
from tests.support import Setup, new_key

CARD = "4000056655665556"
SECRET = "sk_live_audit_secret_7f3a"


async def test_redacted_fields_are_absent_from_the_database_resources_and_logs(
    sqlite_setup: Setup, tmp_path: Path
) -> None:
    setup = sqlite_setup
    path = setup.manifest(tools={"create_invoice": {"redact": ["card_number"]}})
    # A secret in the downstream's environment, as "${VAR}" expansion would put it there.
    path.write_text(path.read_text().replace("env = { ", f'env = {{ "API_TOKEN" = "{SECRET}", ', 1))
    key = new_key()
    arguments = {"customer": "acme", "amount": 12, "card_number": CARD, "idempotency_key": key}
    log = tmp_path / "gateway.log"
    async with logged_client(setup, log) as client:
        await client.call_tool("create_invoice", arguments)
        await client.call_tool("create_invoice", arguments)  # a replay is audited too
        await client.call_tool("create_invoice", {**arguments, "amount": 13})  # and a conflict
        reads = [
            await read_text(client, uri)
            for uri in ("audit://events", f"audit://keys/{key}", "audit://tools/create_invoice")
        ]
    for text in reads:
        assert CARD not in text and SECRET not in text
        assert '"card_number":"***"' in text
    database = b"".join([await p.read_bytes() async for p in anyio.Path(tmp_path).glob("gateway.db*")])
    assert b"***" in database  # the events are there, masked
    assert CARD.encode() not in database and SECRET.encode() not in database
    logged = log.read_text()
    assert "downstream payments: ready" in logged  # the log was captured
    assert CARD not in logged and SECRET not in logged


def test_the_secret_filter_masks_messages_arguments_and_tracebacks() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("tests.audit.secrets")
    logger.propagate = False
    handler = Keep()
    handler.addFilter(SecretFilter([SECRET, "on"]))  # too short to mask: left alone
    logger.addHandler(handler)
    try:
        logger.error("token %s rejected", SECRET)
        try:
            raise RuntimeError(f"bad header Bearer {SECRET}")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    assert records[0] == "token *** rejected"
    assert SECRET not in records[1] and "Bearer ***" in records[1]
