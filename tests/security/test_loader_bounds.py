"""Item 9: a manifest value that would load and then fail every call is a load error instead.

Durations past ten years (date arithmetic would overflow), a retention shorter than the
timeout plus the lease, ``cost = inf`` or ``nan`` (TOML allows both), blank or control-character tool names,
and values that only break when the downstream is started or called (a NUL in an argument, a
header name that is not a token, a URL that ``${VAR}`` expansion made invalid). Each error
names the file and the path, and never echoes a value expanded from the environment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.manifests import ManifestErrors, load_manifests

HEAD = "[server]\nname = 'p'\ncommand = 'python'\n"
HTTP_HEAD = "[server]\nname = 'p'\ntransport = 'http'\nurl = 'http://127.0.0.1:9/mcp'\n"


def _errors(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ManifestErrors) as caught:
        load_manifests(tmp_path, environ or {})
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[defaults]\nretention = '4000000d'", "p.toml: defaults.retention: must be at most 3650d"),
        ("[tools.t]\nwait = '99999999999999999999d'", "p.toml: tools.t.wait: must be at most 3650d"),
        ("timeout = '3651d'", "p.toml: server.timeout: must be at most 3650d"),
        (
            "timeout = '2h'\n[defaults]\nretention = '1h'",
            "p.toml: defaults.retention: must be at least the server's timeout plus the lease",
        ),
        (
            "[tools.t]\nretention = '10s'",
            "p.toml: tools.t.retention: must be at least the server's timeout plus the lease",
        ),
        ("[tools.t]\ncost = inf", "p.toml: tools.t.cost: must be a finite number"),
        ("[tools.t]\ncost = nan", "p.toml: tools.t.cost: must be a finite number"),
        ("[defaults]\ncost = -inf", "p.toml: defaults.cost: must be a finite number"),
        ("[tools.t]\ncost = 1e300", "p.toml: tools.t.cost: must be at most 1e+12"),
        ('[tools."  "]\nside_effects = true', "p.toml: tools.  : a tool name cannot be blank"),
        (
            '[tools." t"]\nside_effects = true',
            "p.toml: tools. t: a tool name cannot start or end with whitespace",
        ),
        (
            '[tools."a\\u001b[2Jb"]\nside_effects = true',
            "p.toml: tools.a\\x1b[2Jb: a tool name cannot contain",
        ),
        (f'[tools."{"t" * 129}"]\nside_effects = true', "a tool name is at most 128 characters"),
        ('[tools.""]\nside_effects = true', "p.toml: tools: must not be empty"),
        ('args = ["a\\u0000b"]', "p.toml: server.args[0]: contains a NUL character"),
        ("env = { 'A=B' = 'x' }", "p.toml: server.env.A=B: a variable name cannot be empty"),
    ],
)
def test_values_that_would_fail_later_are_load_errors(tmp_path: Path, text: str, expected: str) -> None:
    # A top-level key after [server] belongs to it; a table header starts its own section.
    errors = _errors(tmp_path, HEAD + text + "\n")
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "headers = { 'Bad Header' = 'x' }",
            "p.toml: server.headers.Bad Header: not a valid HTTP header name",
        ),
        (
            "headers = { X = '${MULTI}' }",
            "p.toml: server.headers.X: a header value cannot contain CR, LF or NUL",
        ),
        (
            "[tools.t]\nforward_key = 'header:Idem Key'",
            "p.toml: tools.t.forward_key: not a valid HTTP header name",
        ),
    ],
)
def test_http_values_that_would_fail_on_every_call_are_load_errors(
    tmp_path: Path, text: str, expected: str
) -> None:
    errors = _errors(tmp_path, HTTP_HEAD + text + "\n", {"MULTI": "line1\r\nInjected: yes"})
    assert any(expected in e for e in errors), errors
    assert not any("Injected" in e for e in errors)  # an expanded value is never echoed


def test_a_url_made_invalid_by_expansion_is_refused_without_echoing_it(tmp_path: Path) -> None:
    text = "[server]\nname = 'p'\ntransport = 'http'\nurl = 'http://${HOST}/mcp'\n"
    errors = _errors(tmp_path, text, {"HOST": "bad host with spaces"})
    assert errors == ["p.toml: server.url: not a valid http:// or https:// URL (after ${VAR} expansion)"]


def test_a_maximal_but_sane_manifest_loads(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        HEAD + "timeout = '3649d'\n[defaults]\nretention = '3650d'\nwait = '3650d'\ncost = 1e12\n"
        "[tools.'name.with/slashes-and_underscores']\nside_effects = true\n"
    )
    (spec,) = load_manifests(tmp_path, {})
    assert (spec.timeout, spec.defaults.retention) == (3649 * 86400.0, 3650 * 86400.0)
    assert spec.defaults.cost == 1e12


def test_env_passthrough_keeps_the_server_name_and_its_values_are_secrets(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        "[server]\nname = 'payments'\ncommand = 'python'\nenv_passthrough = ['API_KEY']\n"
    )
    (spec,) = load_manifests(tmp_path, {"API_KEY": "passed-through-secret-1234"})
    assert spec.name == "payments"  # not the name of the last variable passed through
    assert "passed-through-secret-1234" in spec.secrets
