"""The manifest keys for transparency: sessions, max_timeout, env_passthrough, resource_prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.manifests import ManifestErrors, ServerSpec, load_manifests

STDIO = '[server]\nname = "s"\ncommand = "node"\n'


def load(tmp_path: Path, extra: str, environ: dict[str, str] | None = None) -> ServerSpec:
    (tmp_path / "s.toml").write_text(STDIO + extra)
    return load_manifests(tmp_path, environ or {})[0]


def test_the_defaults_keep_sessions_per_principal_and_bound_progress_at_ten_minutes(tmp_path: Path) -> None:
    spec = load(tmp_path, "")
    assert (spec.sessions, spec.timeout, spec.max_timeout, spec.resource_prefix) == (
        "per_principal",
        30.0,
        600.0,
        "",
    )


def test_only_passed_through_variables_that_are_set_reach_env(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        'env = { OWN = "x" }\nenv_passthrough = ["PASSED", "UNSET", "OWN"]\n',
        {"PASSED": "p-value", "OTHER": "o-value", "OWN": "from-the-gateway"},
    )
    assert spec.env == {"OWN": "x", "PASSED": "p-value"}
    assert "p-value" in spec.secrets


def test_shared_sessions_a_prefix_and_a_longer_max_timeout_load(tmp_path: Path) -> None:
    spec = load(tmp_path, 'sessions = "shared"\nresource_prefix = "b+"\ntimeout = "5s"\nmax_timeout = "1h"\n')
    assert (spec.sessions, spec.resource_prefix, spec.timeout, spec.max_timeout) == (
        "shared",
        "b+",
        5.0,
        3600.0,
    )


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ('timeout = "1m"\nmax_timeout = "30s"\n', "server.max_timeout"),
        ('sessions = "per_client"\n', "server.sessions"),
        ('env_passthrough = ["NOT A NAME"]\n', "server.env_passthrough[0]"),
    ],
)
def test_a_bad_key_is_named(tmp_path: Path, extra: str, path: str) -> None:
    (tmp_path / "s.toml").write_text(STDIO + extra)
    with pytest.raises(ManifestErrors) as raised:
        load_manifests(tmp_path, {})
    assert [e.path for e in raised.value.errors] == [path]


def test_env_passthrough_is_for_stdio_servers(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        '[server]\nname = "s"\ntransport = "http"\nurl = "http://x/mcp"\nenv_passthrough = ["A"]\n'
    )
    with pytest.raises(ManifestErrors) as raised:
        load_manifests(tmp_path, {})
    assert [e.path for e in raised.value.errors] == ["server.env_passthrough"]
