"""Issue 10, item 2: a fingerprint must not give back the redacted arguments it was made of.

Real gateway processes over stdio, the example payments server, a real SQLite file: the secret
file is created private on first start, the fingerprint shown in the audit is the HMAC under it
(not the plain SHA-256 anyone could brute-force from a card number's known prefix), the same call
on two stores shows two fingerprints, and a gateway with another secret refuses to start on a
store made with the first instead of refusing every retry as a conflict.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp.client.client import Client

from gateway.idempotency.fingerprint import Fingerprinter, canonical_json
from tests.support import Setup, new_key, outcome, write_manifest

CARD = {"customer": "acme", "amount": 12.5, "currency": "EUR", "card_number": "4242424242424242"}
REDACT = {"create_invoice": {"redact": ["card_number"]}}
WAIT = 60.0


async def _fingerprint_after_one_call(setup: Setup, store: str, secret_file: Path) -> str:
    key = new_key()
    params = setup.gateway_params("--secret-file", str(secret_file))
    params.args[params.args.index("--store") + 1] = store
    with anyio.fail_after(WAIT):
        async with Client(params, mode="auto", cache=None) as client:
            result = await client.call_tool("create_invoice", {**CARD, "idempotency_key": key})
            assert outcome(result) == "executed"
            story = await client.read_resource(f"audit://keys/{key}")
    text = story.contents[0].text  # type: ignore[union-attr]
    view: dict[str, Any] = json.loads(text)
    fingerprint = view["record"]["fingerprint"]
    assert isinstance(fingerprint, str) and len(fingerprint) == 64
    return fingerprint


async def test_the_fingerprint_is_an_hmac_under_a_private_secret_kept_apart_from_the_store(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'one.db'}")
    write_manifest(setup.manifests, ledger=setup.ledger, tools=REDACT)
    secret_file = tmp_path / "state" / "idem" / "secret.key"
    one = await _fingerprint_after_one_call(setup, f"sqlite:///{tmp_path / 'one.db'}", secret_file)

    # Created on first start, readable by its owner only, in a private directory.
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    secret = bytes.fromhex(secret_file.read_text().strip())
    assert len(secret) == 32

    plain = hashlib.sha256(canonical_json({"tool": "create_invoice", "arguments": CARD}).encode()).hexdigest()
    assert one != plain  # a brute force over card numbers against the audit finds nothing
    assert one == Fingerprinter(secret)("create_invoice", CARD)
    assert "4242424242424242" not in (tmp_path / "one.db").read_bytes().decode("latin-1")

    # The same call on another store, with that store's own secret, shows another fingerprint.
    other = await _fingerprint_after_one_call(
        setup, f"sqlite:///{tmp_path / 'two.db'}", tmp_path / "state" / "other" / "secret.key"
    )
    assert other != one


async def test_a_gateway_with_another_secret_refuses_to_start_on_the_store(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    write_manifest(setup.manifests, ledger=setup.ledger)
    first = tmp_path / "first" / "secret.key"
    await _fingerprint_after_one_call(setup, setup.store, first)

    second = tmp_path / "second" / "secret.key"
    args = setup.gateway_params("--secret-file", str(second)).args
    with anyio.fail_after(WAIT):
        refused = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
        )
    assert refused.returncode == 1
    assert refused.stdout == ""  # stdout carries protocol messages only
    assert "secret" in refused.stderr.lower()
    assert bytes.fromhex(second.read_text().strip()) != bytes.fromhex(first.read_text().strip())
    assert first.read_text() not in refused.stderr and second.read_text().strip() not in refused.stderr
