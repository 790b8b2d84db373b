"""Item 7: files that other local users cannot read, and a tokens file that cannot be forged.

A real ``serve`` creates its state directory ``0700`` and its SQLite store ``0600`` (the
``-wal`` and ``-shm`` files SQLite adds inherit the mode), whatever the umask; an existing
store open to others is warned about. A tokens file others can write is refused, one others
can read is warned about, and one token hash listed under two principals is refused.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import anyio
import pytest

from gateway.server.http import HttpRefused, Tokens
from tests.http.kit import http_gateway
from tests.security.kit import logged_gateway, run_cli
from tests.support import Setup, new_key, outcome

WAIT = 60.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_serve_creates_the_state_directory_0700_and_the_store_0600(tmp_path: Path) -> None:
    state = tmp_path / "state" / "idem-gateway"
    setup = Setup(tmp_path, f"sqlite:///{state / 'gateway.db'}")
    setup.manifest()
    old = os.umask(0o022)  # the usual umask: without care, 0755 and 0644
    try:
        async with logged_gateway(setup, tmp_path / "gateway.log") as client:
            with anyio.fail_after(WAIT):
                done = await client.call_tool(
                    "create_invoice", {"customer": "a", "amount": 1, "idempotency_key": new_key()}
                )
                assert outcome(done) == "executed"
                files = sorted(state.iterdir())
                modes = {p.name: _mode(p) for p in files}
    finally:
        os.umask(old)
    assert _mode(tmp_path / "state") == 0o700 and _mode(state) == 0o700
    assert {"gateway.db", "gateway.db-wal", "gateway.db-shm"} <= set(modes), modes
    assert set(modes.values()) == {0o600}, modes


async def test_an_existing_store_open_to_others_is_warned_about(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    (tmp_path / "gateway.db").touch(mode=0o644)
    os.chmod(tmp_path / "gateway.db", 0o644)
    log = tmp_path / "gateway.log"
    async with logged_gateway(setup, log) as client:
        with anyio.fail_after(WAIT):
            await client.list_tools()
    assert "is open to other users (mode 644)" in log.read_text()


def _tokens(path: Path, lines: list[str], mode: int) -> Path:
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, mode)
    return path


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_a_tokens_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = _tokens(tmp_path / "tokens.toml", [f'alice = "{_digest("a-token-0123456789")}"'], 0o662)
    with pytest.raises(HttpRefused, match="writable by other users"):
        Tokens.load(path)


def test_one_token_hash_under_two_principals_is_refused(tmp_path: Path) -> None:
    digest = _digest("shared-token-0123456789")
    path = _tokens(tmp_path / "tokens.toml", [f'alice = "{digest}"', f'mallory = ["{digest}"]'], 0o600)
    with pytest.raises(HttpRefused, match="alice and mallory list the same token hash"):
        Tokens.load(path)


async def test_serve_refuses_a_writable_tokens_file_and_warns_on_a_readable_one(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    line = [f'alice = "{_digest("a-token-0123456789")}"']
    argv = [
        "serve",
        "--transport",
        "http",
        "--port",
        "0",
        "--manifests",
        str(setup.manifests),
        "--store",
        setup.store,
    ]
    writable = await run_cli(*argv, "--tokens", str(_tokens(tmp_path / "w.toml", line, 0o666)), cwd=tmp_path)
    assert writable.code == 1 and "writable by other users" in writable.stderr
    # Readable: a warning, then it serves (stopped here by an unusable store, to stay short).
    readable = _tokens(tmp_path / "r.toml", line, 0o644)
    ran = await run_cli(*argv[:-1], "sqlite:///", "--tokens", str(readable), cwd=tmp_path)
    assert "readable by other users" in ran.stderr
    assert ran.code == 1 and "in-memory SQLite store" in ran.stderr


async def test_a_readable_tokens_file_is_warned_about_once_by_a_serving_gateway(setup: Setup) -> None:
    setup.manifest()
    readable = _tokens(setup.tmp / "readable.toml", [f'alice = "{_digest("a-token-0123456789")}"'], 0o644)
    async with http_gateway(setup, "--tokens", str(readable), tokens=False) as gateway:
        log = gateway.log.read_text()
    assert log.count("readable by other users") == 1, log
