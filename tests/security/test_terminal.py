"""Item 6: nothing a client or a downstream sends can drive the operator's terminal.

A key made of escape sequences (clear screen, set title, a newline that forges a table row,
a bidi override) and a downstream tool whose very name carries them go through a real
gateway; then ``audit events``, ``audit show``, ``audit stats``, ``check`` and the gateway's
own log are read as bytes: no ESC, no BEL, no bidi control, no row that was not an event.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security.hostile_server import EVIL_NAME
from tests.security.kit import RawGateway, error_code_of, hostile_manifest, run_cli
from tests.support import Setup, new_key

ATTACK_KEY = (
    "\x1b[2J\x1b]0;pwned\x07\r\n2099-01-01T00:00:00Z  root  forged-key  create_invoice  executed\u202e"
)
CONTROL = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def _clean(text: str) -> None:
    for char in CONTROL:
        assert char not in text, f"{char!r} reached the terminal"


def test_escape_shows_every_control_format_and_separator_character() -> None:
    from gateway.textsafe import escape

    assert escape("plain key 0123-abc") == "plain key 0123-abc"
    assert escape("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert escape("line\nbreak\ttab\x7f\x9b") == "line\\x0abreak\\x09tab\\x7f\\x9b"
    assert escape("gpj.\u202eexe") == "gpj.\\u202eexe"
    assert escape("zero\u200bwidth\u2028sep") == "zero\\u200bwidth\\u2028sep"
    assert escape("accents: é, 日本, emoji 🙂") == "accents: é, 日本, emoji 🙂"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    hostile_manifest(made, env={"HOSTILE_EVIL_NAMES": "1"})
    return made


async def test_keys_and_tool_names_full_of_escapes_are_printed_escaped_everywhere(setup: Setup) -> None:
    shown_name = "evil\\x1b]0;pwned\\x07\\x1b[2J\\u202eexe.gpj"  # EVIL_NAME, escaped
    with RawGateway(setup, env={"IDEM_GATEWAY_LOG_LEVEL": "DEBUG"}) as gateway:
        gateway.handshake()
        refused = gateway.call_tool(
            "create_invoice", {"customer": "acme", "amount": 1, "idempotency_key": ATTACK_KEY}
        )
        assert error_code_of(refused) == "idempotency_key_invalid"
        evil = gateway.call_tool(EVIL_NAME, {"note": "x", "idempotency_key": new_key()})
        assert error_code_of(evil) is None, evil
    logged = gateway.log.read_text()
    _clean(logged)

    events = await run_cli("audit", "events", "--store", setup.store)
    stats = await run_cli("audit", "stats", "--store", setup.store)
    checked = await run_cli("check", "--manifests", str(setup.manifests), env={"HOSTILE_LEDGER": "/dev/null"})
    for ran in (events, stats, checked):
        _clean(ran.stdout + ran.stderr)
    assert events.code == 0 and stats.code == 0 and checked.code == 0
    rows = events.stdout.strip().splitlines()
    assert len(rows) == 3, events.stdout  # the header and the two events: no forged row
    assert "forged-key" not in events.stdout  # a malformed key is not kept as a key
    assert shown_name in events.stdout and shown_name in stats.stdout
    assert shown_name in checked.stdout

    shown = await run_cli("audit", "show", ATTACK_KEY, "--store", setup.store)
    _clean(shown.stdout + shown.stderr)
    assert shown.code == 1  # no such key: the attack key was never stored as one
