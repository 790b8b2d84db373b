"""The command line as a user drives it: the installed ``idem-gateway`` script, the default paths,
every ``IDEM_GATEWAY_*`` variable, ``audit events`` filters, ``audit show`` as text, and ``check``
failing on a downstream that cannot start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.http.kit import INITIALIZE, MCP_HEADERS, TOKENS, bearer, http_gateway, write_tokens
from tests.never_twice.kit import record
from tests.support import Setup, error_code, new_key, outcome, wait_for, write_manifest

SCRIPT = Path(sys.executable).with_name("idem-gateway")  # what `pip install` put next to python
INVOICE = {"customer": "acme", "amount": 12.5}
WAIT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any IDEM_GATEWAY_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEM_GATEWAY_")}
    return {**env, **extra}


def run(argv: list[str], *, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=WAIT)


def gateway_cli(*args: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env)


def stdio(command: str, *args: str, cwd: Path, env: Mapping[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=command, args=list(args), cwd=str(cwd), env=dict(env))


# ---- the console script --------------------------------------------------------------------------


async def test_the_installed_idem_gateway_script_checks_and_serves(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed"
    setup.manifest()
    checked = run([str(SCRIPT), "check", "--manifests", str(setup.manifests)], cwd=setup.tmp, env=os.environ)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split()[:3] == ["TOOL", "SERVER", "CLASS"]
    key = new_key()
    params = stdio(
        str(SCRIPT), "serve", "--manifests", str(setup.manifests), "--store", setup.store,
        cwd=setup.tmp, env=os.environ,
    )  # fmt: skip
    async with Client(params, cache=None) as client:
        first = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
        again = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert (outcome(first), outcome(again)) == ("executed", "replayed")
    assert len(setup.executions("create_invoice")) == 1
    version = run([str(SCRIPT), "--help"], cwd=setup.tmp, env=os.environ)
    assert version.returncode == 0 and version.stdout.startswith("usage: idem-gateway")


# ---- defaults and the environment ----------------------------------------------------------------


async def test_with_no_options_serve_uses_tool_manifests_here_and_the_state_directory(tmp_path: Path) -> None:
    """``./tool_manifests``; the store and the fingerprint secret under ``$XDG_STATE_HOME/idem-gateway``;
    principal ``local``. ``audit show`` with no options finds the same key there."""
    state = tmp_path / "state"
    ledger = tmp_path / "ledger.jsonl"
    write_manifest(tmp_path / "tool_manifests", ledger=ledger)
    env = clean_env(XDG_STATE_HOME=str(state))
    key = new_key()
    async with Client(
        stdio(sys.executable, "-m", "gateway", "serve", cwd=tmp_path, env=env), cache=None
    ) as client:
        first = await client.call_tool("create_invoice", {**INVOICE, "idempotency_key": key})
    assert outcome(first) == "executed"
    home = state / "idem-gateway"
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith("gateway.db-")) == [
        "gateway.db",
        "secret.key",
    ]
    assert (home / "secret.key").stat().st_mode & 0o077 == 0  # the secret is the user's alone
    stored = await record(f"sqlite:///{home / 'gateway.db'}", key, principal="local")
    assert stored is not None and stored["state"] == "completed"

    shown = gateway_cli("audit", "show", key, cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    fields = dict(line.split(None, 1) for line in lines[: lines.index("")])
    assert fields["STATE"] == "completed" and fields["TOOL"] == "create_invoice"
    events = lines[lines.index("") + 1 :]
    assert events[0].split()[:5] == ["AT", "PRINCIPAL", "KEY", "TOOL", "OUTCOME"]
    assert [row.split()[3:5] for row in events[1:]] == [["create_invoice", "executed"]]


async def test_serve_and_audit_read_every_setting_from_the_environment(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'env.db'}")
    setup.manifest()
    secret = tmp_path / "secrets" / "fingerprint.key"
    state = tmp_path / "state"  # must stay empty: every path came from the environment
    state.mkdir()
    env = clean_env(
        XDG_STATE_HOME=str(state),
        IDEM_GATEWAY_MANIFESTS=str(setup.manifests),
        IDEM_GATEWAY_STORE=setup.store,
        IDEM_GATEWAY_PRINCIPAL="envy",
        IDEM_GATEWAY_SECRET_FILE=str(secret),
        IDEM_GATEWAY_LEASE_TTL="600",
        IDEM_GATEWAY_LOG_LEVEL="DEBUG",
    )
    elsewhere = tmp_path / "elsewhere"  # no ./tool_manifests here
    elsewhere.mkdir()
    gate = tmp_path / "gate"
    key = new_key()
    args = {"label": "env", "gate_file": str(gate), "idempotency_key": key}
    log = tmp_path / "gateway.log"
    params = stdio(sys.executable, "-m", "gateway", "serve", cwd=elsewhere, env=env)
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), cache=None) as client:
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "slow_op", args)
                    await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                    held = await record(setup.store, key, principal="envy")
                    gate.touch()
            replay = await client.call_tool("slow_op", args)
    assert outcome(replay) == "replayed"
    assert held is not None and held["lease_expires_at"] - held["created_at"] == 600_000_000
    assert secret.is_file() and list(state.iterdir()) == []
    assert " DEBUG " in log.read_text()

    events = gateway_cli("audit", "events", "--json", cwd=elsewhere, env=env)
    assert events.returncode == 0, events.stderr
    body = json.loads(events.stdout)
    assert [(e["principal"], e["key"], e["outcome"]) for e in body["events"]] == [
        ("envy", key, "replayed"),
        ("envy", key, "executed"),
    ]
    shown = gateway_cli("audit", "show", key, "--json", cwd=elsewhere, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["record"]["state"] == "completed"


async def test_http_serve_reads_its_tokens_and_statelessness_from_the_environment(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    tokens = write_tokens(setup.tmp / "env-tokens.toml")
    env = {"IDEM_GATEWAY_TOKENS": str(tokens), "IDEM_GATEWAY_STATELESS": "1"}
    async with http_gateway(setup, tokens=False, env=env) as gw:
        refused = await gw.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=MCP_HEADERS
        )
        accepted = await gw.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **bearer("alice")})
    assert refused.status_code == 401
    assert accepted.status_code == 200
    assert "mcp-session-id" not in accepted.headers  # stateless: no handshake-era session
    assert TOKENS["alice"] not in gw.log.read_text()


# ---- audit events and audit show -------------------------------------------------------------------


async def test_audit_events_filters_by_tool_key_outcome_principal_and_limit(setup: Setup) -> None:
    setup.manifest()
    a, b, c = new_key(), new_key(), new_key()
    async with setup.client(principal="alice") as alice:
        await alice.call_tool("create_invoice", {**INVOICE, "idempotency_key": a})
        await alice.call_tool("create_invoice", {**INVOICE, "idempotency_key": a})
        await alice.call_tool("create_invoice", {**INVOICE, "amount": 1, "idempotency_key": a})
        await alice.call_tool(
            "send_email", {"to": "x@y.z", "subject": "s", "body": "b", "idempotency_key": b}
        )
    async with setup.client(principal="bob") as bob:
        await bob.call_tool("create_invoice", {**INVOICE, "idempotency_key": c})
        assert error_code(await bob.call_tool("create_invoice", INVOICE)) == "idempotency_key_missing"

    def events(*flags: str) -> list[tuple[str, str | None, str, str]]:
        done = gateway_cli(
            "audit", "events", "--store", setup.store, "--json", *flags, cwd=setup.tmp, env=os.environ
        )
        assert done.returncode == 0, done.stderr
        return [
            (e["principal"], e["key"], e["tool"], e["outcome"]) for e in json.loads(done.stdout)["events"]
        ]

    everything = events()
    assert everything == [  # newest first
        ("bob", None, "create_invoice", "missing_key"),
        ("bob", c, "create_invoice", "executed"),
        ("alice", b, "send_email", "executed"),
        ("alice", a, "create_invoice", "conflict"),
        ("alice", a, "create_invoice", "replayed"),
        ("alice", a, "create_invoice", "executed"),
    ]
    assert events("--tool", "send_email") == [("alice", b, "send_email", "executed")]
    assert events("--key", a) == everything[3:]
    assert events("--outcome", "executed") == [everything[1], everything[2], everything[5]]
    assert events("--principal", "bob") == everything[:2]
    assert events("--principal", "alice", "--tool", "create_invoice", "--outcome", "replayed") == [
        everything[4]
    ]
    assert events("--limit", "2") == everything[:2]
    assert events("--key", new_key()) == []

    table = gateway_cli("audit", "events", "--store", setup.store, "--key", a, cwd=setup.tmp, env=os.environ)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["AT", "PRINCIPAL", "KEY", "TOOL", "OUTCOME", "MS", "ARGUMENTS"]
    assert [row[1:5] for row in rows[1:]] == [
        ["alice", a, "create_invoice", o] for o in ("conflict", "replayed", "executed")
    ]
    none = gateway_cli(
        "audit", "events", "--store", setup.store, "--key", new_key(), cwd=setup.tmp, env=os.environ
    )
    assert none.returncode == 0 and none.stdout == "" and "no events" in none.stderr
    bad = gateway_cli(
        "audit", "events", "--store", setup.store, "--limit", "0", cwd=setup.tmp, env=os.environ
    )
    # A usage error, as argparse reports every bad option: exit 2, the option named, no traceback.
    assert bad.returncode == 2 and "argument --limit" in bad.stderr and "Traceback" not in bad.stderr


LIGHT_COMMANDS = """
import sys
import anyio
from gateway.cli import main
from gateway.store import open_store

async def make(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()

anyio.run(make, sys.argv[1])
codes = [main([*cmd.split(), "--store", sys.argv[1]]) for cmd in ("audit events", "audit stats", "purge")]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mcp", "mcp_types", "jsonschema", "uvicorn"))
print(codes, heavy)
"""


def test_the_audit_and_purge_commands_never_load_the_mcp_sdk(tmp_path: Path) -> None:
    """An operator's read commands open the store and print: importing the MCP SDK and its wire
    types would cost each of them about 1.5 s of CPU for nothing."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    done = run([sys.executable, "-c", LIGHT_COMMANDS, url], cwd=tmp_path, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[0, 0, 0] []"


# ---- check --------------------------------------------------------------------------------------


def test_check_exits_1_when_a_downstream_cannot_start(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    write_manifest(folder, ledger=tmp_path / "ledger.jsonl")  # this one starts
    (folder / "broken.toml").write_text(
        '[server]\nname = "broken"\ntransport = "stdio"\n'
        f"command = {json.dumps(sys.executable)}\n"
        'args = ["-c", "import sys; sys.exit(3)"]\n'
    )
    done = gateway_cli("check", "--manifests", str(folder), cwd=tmp_path, env=os.environ)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: broken.toml: server: downstream 'broken' did not start"
    )
    # The one that started is still listed: every problem at once, and what works.
    assert "create_invoice" in done.stdout
