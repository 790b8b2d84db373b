"""Planning a manifest from a client entry: what is lifted, how it is named, how ``${`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.importer.clients import Client, ClientConfig, ConfigError, Entry, read_config, strip_jsonc
from gateway.importer.plan import Plan, Variables, plan_all


def plans(
    client: Client, servers: dict[str, dict[str, object]], path: Path = Path("/p/.mcp.json")
) -> list[Plan]:
    config = ClientConfig(path, client, [Entry(n, raw) for n, raw in servers.items()], workspace=path.parent)
    return plan_all(config, Variables())


def test_jsonc_comments_and_trailing_commas_are_dropped_and_positions_kept() -> None:
    text = '{\n  // a comment with "quotes"\n  "a": "// not a comment", /* x */\n  "b": [1, 2,],\n}\n'
    stripped = strip_jsonc(text)
    assert json.loads(stripped) == {"a": "// not a comment", "b": [1, 2]}
    assert len(stripped) == len(text) and stripped.count("\n") == text.count("\n")


def test_claude_desktop_expands_nothing_so_a_literal_dollar_brace_is_escaped() -> None:
    (plan,) = plans(Client.CLAUDE_DESKTOP, {"s": {"command": "run", "args": ["--fmt=${x}"]}})
    assert plan.args == ["--fmt=$${x}"]


def test_claude_code_references_stay_references_with_their_defaults() -> None:
    (plan,) = plans(
        Client.CLAUDE_CODE, {"s": {"command": "run", "args": ["${DIR:-/tmp}/x"], "env": {"T": "${TOK}"}}}
    )
    assert plan.args == ["${DIR:-/tmp}/x"] and plan.env == {"T": "${TOK}"}
    assert plan.variables == ["DIR", "TOK"]


def test_one_env_name_with_two_values_becomes_two_variables_and_one_value_is_shared() -> None:
    a, b, c = plans(
        Client.CLAUDE_CODE,
        {
            "a": {"command": "x", "env": {"API_KEY": "one"}},
            "b": {"command": "x", "env": {"API_KEY": "two"}},
            "c": {"command": "x", "env": {"API_KEY": "one"}},
        },
    )
    assert (a.env, b.env, c.env) == (
        {"API_KEY": "${API_KEY}"},
        {"API_KEY": "${B_API_KEY}"},
        {"API_KEY": "${API_KEY}"},
    )


def test_names_the_gateway_reads_itself_are_never_taken_over() -> None:
    (plan,) = plans(Client.CLAUDE_CODE, {"s": {"command": "x", "env": {"PATH": "/opt/bin", "OTEL_X": "1"}}})
    assert plan.env == {"PATH": "${S_PATH}", "OTEL_X": "${S_OTEL_X}"}


def test_server_names_become_manifest_names_and_stay_unique() -> None:
    names = [
        p.name
        for p in plans(Client.CLAUDE_CODE, {n: {"command": "x"} for n in ("My Server", "my-server", "")})
    ]
    assert names == ["my-server", "my-server-2", "server"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/mcp?token=abc&x=1", "https://h/mcp?token=${S_TOKEN}&x=1"),
        ("https://h/mcp?apiKey=abc", "https://h/mcp?apiKey=${S_APIKEY}"),
        ("https://u:pw@h/mcp", "https://u:${S_PASSWORD}@h/mcp"),
        ("https://h/mcp?region=eu", "https://h/mcp?region=eu"),
    ],
)
def test_a_credential_in_a_url_is_lifted_and_the_rest_kept(url: str, expected: str) -> None:
    (plan,) = plans(Client.CLAUDE_CODE, {"s": {"url": url}})
    assert plan.transport == "http" and plan.url == expected


def test_an_unsupported_transport_is_a_problem_not_a_guess() -> None:
    (plan,) = plans(Client.CLAUDE_CODE, {"s": {"type": "ws", "url": "ws://h"}})
    assert plan.problem is not None and "ws" in plan.problem


def test_the_client_is_told_by_the_file_name_then_the_shape(tmp_path: Path) -> None:
    body = json.dumps({"mcpServers": {"a": {"command": "x"}}})
    for name, client in [
        ("claude_desktop_config.json", Client.CLAUDE_DESKTOP),
        (".mcp.json", Client.CLAUDE_CODE),
        ("anything.json", Client.CLAUDE_CODE),
    ]:
        (tmp_path / name).write_text(body)
        assert read_config(tmp_path / name).client is client
    (tmp_path / "servers.json").write_text(json.dumps({"servers": {"a": {"command": "x"}}}))
    assert read_config(tmp_path / "servers.json").client is Client.VSCODE
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError):
        read_config(tmp_path / "list.json")
