"""Item 10: the command line never creates a store by reading, never serves from memory, and
answers a bad value with a sentence instead of a traceback.

The CLI runs as a process (``python -m gateway``), as an operator would run it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.security.kit import run_cli

READ_COMMANDS = [
    ["audit", "events"],
    ["audit", "show", "k" * 20],
    ["audit", "stats"],
    ["resolve", "k" * 20, "--as", "failed"],
    ["purge"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
async def test_read_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo" / "x.db"
    ran = await run_cli(*command, "--store", f"sqlite:///{missing}")
    assert ran.code == 1
    assert f"no store at {missing}" in ran.stderr and "never creates one" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert not missing.exists() and not missing.parent.exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
async def test_serve_refuses_an_in_memory_store(tmp_path: Path, url: str) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "p.toml").write_text("[server]\nname = 'p'\ncommand = 'python'\n")
    ran = await run_cli("serve", "--manifests", str(tmp_path / "m"), "--store", url)
    assert ran.code == 1 and "in-memory SQLite store" in ran.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["audit", "events", "--limit", "99999999999999999999"], "argument --limit: expected a whole number"),
        (["audit", "events", "--limit", "0"], "argument --limit: expected a whole number from 1"),
        (["serve", "--port", "65536"], "argument --port: expected a whole number from 0 to 65535"),
        (["serve", "--lease-ttl", "inf"], "argument --lease-ttl: expected a number of seconds"),
        (["serve", "--lease-ttl", "nan"], "argument --lease-ttl: expected a number of seconds"),
        (["serve", "--rate-limit", "lots"], "argument --rate-limit: expected COUNT/UNIT"),
        (["serve", "--audit-retention", "99999d"], "argument --audit-retention: expected a duration"),
        (["--log-level", "LOUD", "purge"], "argument --log-level: expected one of DEBUG"),
    ],
)
async def test_bad_values_get_a_usage_error_not_a_traceback(argv: list[str], expected: str) -> None:
    ran = await run_cli(*argv)
    assert ran.code == 2, ran.stderr
    assert expected in ran.stderr and "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        (
            {"IDEM_GATEWAY_LEASE_TTL": "abc"},
            ["serve"],
            "IDEM_GATEWAY_LEASE_TTL='abc': expected a number of seconds",
        ),
        ({"IDEM_GATEWAY_RATE_LIMIT": "9/fortnight"}, ["serve"], "IDEM_GATEWAY_RATE_LIMIT='9/fortnight'"),
        ({"IDEM_GATEWAY_STATELESS": "maybe"}, ["serve"], "IDEM_GATEWAY_STATELESS='maybe': expected 1/true"),
        ({"IDEM_GATEWAY_LOG_LEVEL": "\x1b[2J"}, ["purge"], "IDEM_GATEWAY_LOG_LEVEL='\\\\x1b[2J'"),
    ],
)
async def test_a_bad_environment_value_is_named_in_a_sentence(
    env: dict[str, str], argv: list[str], expected: str
) -> None:
    ran = await run_cli(*argv, env=env)
    assert ran.code == 2 and expected in ran.stderr and "Traceback" not in ran.stderr
    assert "\x1b" not in ran.stderr


async def test_help_never_reads_the_environment() -> None:
    ran = await run_cli("purge", "--help", env={"IDEM_GATEWAY_LEASE_TTL": "abc", "IDEM_GATEWAY_STORE": "x"})
    assert ran.code == 0 and "Traceback" not in ran.stderr


def _options(parser: object) -> list[tuple[str, object]]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    found: list[tuple[str, object]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {flag}", a) for flag, a in _options(sub)]
        elif action.option_strings and action.dest != "help":
            found.append((action.option_strings[-1], action))
    return found


def test_every_option_has_help_that_shows_its_default_and_its_environment_variable() -> None:
    documented_env = {
        "--store": "IDEM_GATEWAY_STORE",
        "--manifests": "IDEM_GATEWAY_MANIFESTS",
        "--principal": "IDEM_GATEWAY_PRINCIPAL",
        "--tokens": "IDEM_GATEWAY_TOKENS",
        "--log-level": "IDEM_GATEWAY_LOG_LEVEL",
        "--rate-limit": "IDEM_GATEWAY_RATE_LIMIT",
        "--audit-retention": "IDEM_GATEWAY_AUDIT_RETENTION",
        "--lease-ttl": "IDEM_GATEWAY_LEASE_TTL",
    }
    # Filters that mean "every principal" when absent, and the demo's own throwaway store.
    no_env = {"audit events --principal", "audit stats --principal", "demo --store"}
    options = _options(build_parser())
    assert len(options) > 30
    for where, action in options:
        text = getattr(action, "help", None) or ""
        assert re.search(r"\((default: [^)]+|required\))", text), f"{where}: no default in its help: {text!r}"
        flag = where.split()[-1]
        if flag in documented_env and where not in no_env:
            assert f"env {documented_env[flag]}" in text, f"{where}: no environment variable in {text!r}"
