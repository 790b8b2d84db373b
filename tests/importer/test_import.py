"""``idem-gateway import``: a real client configuration in, manifests that load and start out.

Every test runs the command as a process (``python -m gateway import``) on a file in one of
the three clients' formats, with real servers behind it: ``examples/payments_server.py`` over
stdio and over HTTP, and the published Node reference memory server from npm.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.manifests import load_manifests
from tests.http.test_http import http_downstream
from tests.support import EXAMPLE_SERVER, Setup, npm_package

MEMORY = "@modelcontextprotocol/server-memory@2026.8.31"
PAYMENTS_READ_ONLY = {"get_invoice", "list_invoices", "quote_fee", "echo_meta"}  # the readOnlyHint tools


@pytest.fixture(scope="module")
def memory_server() -> Path:
    return npm_package(MEMORY, "@modelcontextprotocol/server-memory/dist/index.js")


def run_import(
    config: Path, *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "import", str(config), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_json(path: Path, body: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2))
    return path


def payments_entry(ledger: Path, **extra: Any) -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": [str(EXAMPLE_SERVER)],
        "env": {"PAYMENTS_LEDGER": str(ledger)},
        **extra,
    }


def snippet(stdout: str) -> dict[str, Any]:
    """The client entry: the JSON after the "In FILE, replace ..." line, up to "Look at:"."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("In ") and " replace " in line) + 1
    end = next((i for i, line in enumerate(lines) if line == "Look at:"), len(lines))
    return json.loads("\n".join(lines[start:end]))


def review(stdout: str) -> dict[str, list[str]]:
    """The review table (``check``'s): tool → [server, class, ...]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["TOOL", "SERVER", "CLASS"])
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        tool, *rest = line.split()
        rows[tool] = rest
    return rows


def side_effects(manifest: Path) -> dict[str, bool]:
    import tomllib

    tools = tomllib.loads(manifest.read_text())["tools"]
    return {name: table["side_effects"] for name, table in tools.items()}


# ---- each client's format ------------------------------------------------------------------------


@pytest.mark.node
def test_a_claude_desktop_config_becomes_manifests_that_load_with_every_tool_classified(
    tmp_path: Path, memory_server: Path
) -> None:
    config = write_json(
        tmp_path / "claude_desktop_config.json",
        {
            "globalShortcut": "",
            "mcpServers": {
                "payments": payments_entry(tmp_path / "ledger.jsonl"),
                "memory": {
                    "command": "node",
                    "args": [str(memory_server)],
                    "env": {"MEMORY_FILE_PATH": str(tmp_path / "memory.jsonl")},
                },
            },
        },
    )
    done = run_import(config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "tool_manifests"
    assert sorted(p.name for p in out.iterdir()) == ["memory.toml", "payments.toml"]

    payments = side_effects(out / "payments.toml")
    assert {t for t, se in payments.items() if not se} == PAYMENTS_READ_ONLY
    assert payments["create_invoice"] is True  # unannotated: side-effecting by default
    memory = side_effects(out / "memory.toml")
    assert memory["create_entities"] is True and memory["delete_entities"] is True  # readOnlyHint = false
    assert memory["read_graph"] is False and memory["search_nodes"] is False  # readOnlyHint = true
    text = (out / "payments.toml").read_text()
    assert "side_effects = true  # no readOnlyHint: side-effecting by default" in text

    environ = {**os.environ, "PAYMENTS_LEDGER": str(tmp_path / "l"), "MEMORY_FILE_PATH": str(tmp_path / "m")}
    specs = {s.name: s for s in load_manifests(out, environ)}
    assert specs["payments"].env == {"PAYMENTS_LEDGER": str(tmp_path / "l")}
    assert specs["payments"].policy_for("list_invoices").side_effects is False

    table = review(done.stdout)
    assert table["create_invoice"][:2] == ["payments", "side-effecting"]
    assert table["read_graph"][:2] == ["memory", "read-only"]
    assert "create_invoice" in done.stdout.split("Look at:")[1].split("\n    payments: ")[1].splitlines()[0]
    # Claude Desktop's own format, which expands nothing: placeholders say where each value was.
    entry = snippet(done.stdout)["mcpServers"]["idem-gateway"]
    assert "type" not in entry
    assert entry["args"][-3:] == ["serve", "--manifests", str(out)]
    assert entry["env"]["MEMORY_FILE_PATH"] == "<the value of memory: env MEMORY_FILE_PATH>"


async def test_a_claude_code_mcp_json_with_stdio_and_http_servers(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    async with http_downstream(setup) as url:
        config = write_json(
            tmp_path / "project" / ".mcp.json",
            {
                "mcpServers": {
                    "payments": {"type": "stdio", **payments_entry(tmp_path / "ledger.jsonl")},
                    "payments-http": {
                        "type": "http",
                        "url": url + "?api_key=query-secret-0001",
                        "headers": {"Authorization": "Bearer header-secret-0002", "X-Team": "${TEAM_ID}"},
                    },
                }
            },
        )
        done = run_import(config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "tool_manifests"
    http = (out / "payments-http.toml").read_text()
    assert 'transport = "http"' in http
    assert f'url = "{url}?api_key=${{PAYMENTS_HTTP_API_KEY}}"' in http
    assert '"Bearer ${PAYMENTS_HTTP_TOKEN}"' in http
    assert '"${TEAM_ID}"' in http  # a reference in Claude Code's syntax stays one
    # Claude Code runs servers in the project folder: the manifest says so, relative to itself.
    assert 'cwd = "../project"' in (out / "payments.toml").read_text()
    # Both servers offer the same tools: the later one is exposed with a prefix.
    assert 'tool_prefix = "payments-http_"' in http
    table = review(done.stdout)
    assert table["create_invoice"][0] == "payments"
    assert table["payments-http_create_invoice"][0] == "payments-http"

    environ = {
        **os.environ,
        "PAYMENTS_LEDGER": "x",
        "PAYMENTS_HTTP_API_KEY": "query-secret-0001",
        "PAYMENTS_HTTP_TOKEN": "header-secret-0002",
        "TEAM_ID": "t1",
    }
    specs = {s.name: s for s in load_manifests(out, environ)}
    assert specs["payments-http"].url == url + "?api_key=query-secret-0001"
    assert specs["payments-http"].headers == {"Authorization": "Bearer header-secret-0002", "X-Team": "t1"}
    entry = snippet(done.stdout)["mcpServers"]["idem-gateway"]
    assert entry["type"] == "stdio"
    assert entry["env"]["PAYMENTS_HTTP_TOKEN"] == "${PAYMENTS_HTTP_TOKEN}"
    assert entry["env"]["TEAM_ID"] == "${TEAM_ID}"


def test_a_vscode_mcp_json_with_comments_inputs_and_workspace_folder(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    vscode = workspace / ".vscode" / "mcp.json"
    vscode.parent.mkdir(parents=True)
    vscode.write_text(
        "{\n"
        "  // VS Code writes JSON with comments and trailing commas\n"
        '  "inputs": [\n'
        '    {"type": "promptString", "id": "stripe-key", "description": "Stripe key", "password": true},\n'
        "  ],\n"
        '  "servers": {\n'
        '    "Payments": {\n'
        '      "type": "stdio",\n'
        f'      "command": {json.dumps(sys.executable)},\n'
        f'      "args": [{json.dumps(str(EXAMPLE_SERVER))}],\n'
        '      "env": {"PAYMENTS_LEDGER": "${workspaceFolder}/ledger.jsonl",\n'
        '              "STRIPE_KEY": "${input:stripe-key}",\n'
        '              "HOME_DIR": "${env:HOME}"}, /* inline */\n'
        "    },\n"
        "  },\n"
        "}\n"
    )
    done = run_import(vscode, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = (tmp_path / "tool_manifests" / "payments.toml").read_text()
    assert 'name = "payments"' in manifest  # "Payments" is not a manifest name
    assert 'STRIPE_KEY = "${STRIPE_KEY}"' in manifest
    assert 'HOME_DIR = "${HOME}"' in manifest
    assert 'cwd = "../ws"' in manifest
    environ = {**os.environ, "PAYMENTS_LEDGER": "l", "STRIPE_KEY": "k"}
    assert load_manifests(tmp_path / "tool_manifests", environ)[0].cwd == workspace
    body = snippet(done.stdout)
    env = body["servers"]["idem-gateway"]["env"]
    assert env["STRIPE_KEY"] == "${input:stripe-key}"  # VS Code keeps prompting for it, as before
    assert env["HOME_DIR" if "HOME_DIR" in env else "HOME"] == "${env:HOME}"
    assert env["PAYMENTS_LEDGER"] == "${input:PAYMENTS_LEDGER}"  # a literal before: now a password input
    inputs = {i["id"]: i for i in body["inputs"]}
    assert inputs["stripe-key"]["description"] == "Stripe key"
    assert inputs["PAYMENTS_LEDGER"]["password"] is True
    assert str(workspace / "ledger.jsonl") not in done.stdout  # a lifted value is never printed


# ---- failures, secrets, re-import, --only, --force ---------------------------------------------


def test_a_server_that_does_not_start_is_still_written_and_marked(tmp_path: Path) -> None:
    config = write_json(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "payments": payments_entry(tmp_path / "ledger.jsonl"),
                "missing": {"command": str(tmp_path / "no-such-program")},
                "crashes": {
                    "command": sys.executable,
                    "args": ["-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                },
            }
        },
    )
    done = run_import(config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "tool_manifests"
    status = {line.split()[0]: line for line in done.stdout.splitlines()[1:5]}
    assert re.search(r"started, \d+ tool\(s\)", status["payments"])
    for name in ("missing", "crashes"):
        assert "DID NOT START" in status[name]
        text = (out / f"{name}.toml").read_text()
        assert "# NOT STARTED" in text and "[tools." not in text
        assert f"- {name} did not start: " in done.stdout
    assert "    | boom" in done.stdout  # the server's own last words
    assert {s.name for s in load_manifests(out, {**os.environ, "PAYMENTS_LEDGER": "l"})} == {
        "payments",
        "missing",
        "crashes",
    }


def test_a_server_that_never_answers_is_given_up_after_the_start_timeout(tmp_path: Path) -> None:
    # Alone, so that no other server has to start within the short bound on a busy machine.
    hangs = {"command": sys.executable, "args": ["-c", "import time; time.sleep(120)"]}
    config = write_json(tmp_path / ".mcp.json", {"mcpServers": {"hangs": hangs}})
    done = run_import(config, "--start-timeout", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DID NOT START" in done.stdout and "- hangs did not start: " in done.stdout
    assert "# NOT STARTED" in (tmp_path / "tool_manifests" / "hangs.toml").read_text()


SECRETS = {
    "env": "env-secret-4711-aaaa",
    "flag": "flag-secret-4712-bbbb",
    "flag_eq": "flag-secret-4713-cccc",
    "dsn_password": "dsn-secret-4714-dddd",
    "header": "header-secret-4715-eeee",
    "header_raw": "raw-secret-4716-ffff",
    "query": "query-secret-4717-gggg",
    "printed": "printed-secret-4718-hhhh",
}


def test_no_literal_secret_reaches_a_manifest_or_the_output(tmp_path: Path) -> None:
    s = SECRETS
    wrapper = (
        "import runpy, sys; path = sys.argv[1]; sys.argv = [path]; runpy.run_path(path, run_name='__main__')"
    )
    config = write_json(
        tmp_path / "claude_desktop_config.json",
        {
            "mcpServers": {
                "payments": {
                    "command": sys.executable,
                    "args": [
                        "-c",
                        wrapper,
                        str(EXAMPLE_SERVER),
                        "--api-key",
                        s["flag"],
                        f"--token={s['flag_eq']}",
                        f"postgresql://app:{s['dsn_password']}@db.internal/app",
                    ],
                    "env": {"PAYMENTS_LEDGER": str(tmp_path / "ledger.jsonl"), "STRIPE_SECRET": s["env"]},
                },
                "leaky": {  # prints its secret to stderr and dies: the tail shown must be masked
                    "command": sys.executable,
                    "args": [
                        "-c",
                        "import os, sys; print('token', os.environ['LEAKY_TOKEN'], file=sys.stderr); exit(1)",
                    ],
                    "env": {"LEAKY_TOKEN": s["printed"]},
                },
                "remote": {
                    "url": f"http://127.0.0.1:9/mcp?access_token={s['query']}&region=eu",
                    "headers": {"Authorization": f"Bearer {s['header']}", "X-Api-Key": s["header_raw"]},
                },
            }
        },
    )
    done = run_import(config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "tool_manifests"
    written = {p.name: p.read_text() for p in out.iterdir()}
    assert set(written) == {"payments.toml", "leaky.toml", "remote.toml"}
    for secret in s.values():
        for name, text in written.items():
            assert secret not in text, f"{secret} in {name}"
        assert secret not in done.stdout and secret not in done.stderr
    assert "    | token ***" in done.stdout

    # Set the printed variables to the values and the manifests say exactly what the file said.
    environ = {
        **os.environ,
        "PAYMENTS_LEDGER": str(tmp_path / "ledger.jsonl"),
        "STRIPE_SECRET": s["env"],
        "PAYMENTS_API_KEY": s["flag"],
        "PAYMENTS_TOKEN": s["flag_eq"],
        "PAYMENTS_PASSWORD": s["dsn_password"],
        "LEAKY_TOKEN": s["printed"],
        "REMOTE_TOKEN": s["header"],
        "REMOTE_X_API_KEY": s["header_raw"],
        "REMOTE_ACCESS_TOKEN": s["query"],
    }
    for name in environ.keys() - os.environ.keys():
        assert name in done.stdout.split("Set these variables")[1]
    specs = {spec.name: spec for spec in load_manifests(out, environ)}
    assert specs["payments"].args[-3:] == (
        s["flag"],
        f"--token={s['flag_eq']}",
        f"postgresql://app:{s['dsn_password']}@db.internal/app",
    )
    assert specs["payments"].env["STRIPE_SECRET"] == s["env"]
    assert specs["remote"].url == f"http://127.0.0.1:9/mcp?access_token={s['query']}&region=eu"
    assert specs["remote"].headers == {"Authorization": f"Bearer {s['header']}", "X-Api-Key": s["header_raw"]}


def test_reimport_writes_byte_identical_files(tmp_path: Path) -> None:
    config = write_json(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "payments": payments_entry(
                    tmp_path / "ledger.jsonl", env={"PAYMENTS_LEDGER": "l", "K": "v1"}
                ),
                "missing": {"command": str(tmp_path / "no-such-program"), "env": {"K": "v2"}},
            }
        },
    )
    first = run_import(config, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "tool_manifests"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_import(config, "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Two servers, one env name, two values: two variables, the same two every time.
    assert b'K = "${K}"' in before["payments.toml"] and b'K = "${MISSING_K}"' in before["missing.toml"]
    assert first.stdout == again.stdout


def test_only_imports_the_named_servers(tmp_path: Path) -> None:
    config = write_json(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "payments": payments_entry(tmp_path / "ledger.jsonl"),
                "Other Server": {"command": str(tmp_path / "no-such-program")},
                "third": {"command": str(tmp_path / "no-such-program")},
            }
        },
    )
    done = run_import(config, "--only", "payments", "Other Server", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "tool_manifests").iterdir()) == [
        "other-server.toml",
        "payments.toml",
    ]
    assert "'payments', 'Other Server'" in done.stdout  # what the snippet replaces

    unknown = run_import(config, "--only", "nope", "--out", str(tmp_path / "other"), cwd=tmp_path)
    assert unknown.returncode == 1
    assert "no server named 'nope'" in unknown.stderr and "'third'" in unknown.stderr
    assert not (tmp_path / "other").exists()


def test_an_existing_manifest_is_kept_unless_forced(tmp_path: Path) -> None:
    config = write_json(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "payments": payments_entry(tmp_path / "ledger.jsonl"),
                "missing": {"command": str(tmp_path / "no-such-program")},
            }
        },
    )
    out = tmp_path / "tool_manifests"
    out.mkdir()
    mine = '[server]\nname = "payments"\ncommand = "python"\n# edited by hand\n'
    (out / "payments.toml").write_text(mine)

    kept = run_import(config, cwd=tmp_path)
    assert kept.returncode == 1
    assert (out / "payments.toml").read_text() == mine
    assert (out / "missing.toml").exists()  # the others are still written
    assert "exists, left as it is (--force overwrites it)" in kept.stdout

    forced = run_import(config, "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "[tools.create_invoice]" in (out / "payments.toml").read_text()


def test_a_file_that_is_not_a_client_configuration_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / ".mcp.json"
    bad.write_text('{"mcpServers": {"a": {"command": "x"},}\n')  # one closing brace short
    done = run_import(bad, cwd=tmp_path)
    assert done.returncode == 1
    assert "invalid JSON at line 2" in done.stderr
    empty = write_json(tmp_path / "other.json", {"theme": "dark"})
    done = run_import(empty, cwd=tmp_path)
    assert done.returncode == 1 and "no MCP servers" in done.stderr
    assert not (tmp_path / "tool_manifests").exists()
