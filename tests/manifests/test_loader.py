"""The manifest loader: a good folder becomes specs; every bad input is named by file and path."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Literal

import pytest

from gateway.durations import parse_duration
from gateway.manifests import (
    ForwardKey,
    ManifestError,
    ManifestErrors,
    ServerSpec,
    ToolPolicy,
    load_manifests,
)
from gateway.manifests.loader import check_exposed_names, expand_env

REPO = Path(__file__).resolve().parents[2]

PAYMENTS = """
[server]
name = "payments"
transport = "stdio"
command = "${PAY_PY:-/usr/bin/env}"
args = ["server.py", "--token=${PAYMENTS_TOKEN}"]
env = { API_TOKEN = "${PAYMENTS_TOKEN}", LEDGER = "${PAYMENTS_LEDGER:-ledger.jsonl}" }
cwd = "work"
tool_prefix = "pay_"
timeout = "1500ms"

[defaults]
retention = "2h"
wait = "10s"
in_flight = "reject"
redact = ["password"]
forward_key = "meta:idem"

[tools.create_invoice]
side_effects = true
retention = "7d"
fingerprint_exclude = ["trace_id"]
forward_key = "argument:idempotency_key"
redact = ["card_number"]
cost = 0.30

[tools.consume]
key_from = "message_id"

[tools.list_invoices]
side_effects = false
"""

ENV = {"PAYMENTS_TOKEN": "s3cr3t-value"}


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def stdio(name: str, extra: str = "") -> str:
    return f'[server]\nname = "{name}"\ncommand = "run"\n{extra}\n'


def load_errors(folder: Path, environ: dict[str, str] | None = None) -> list[ManifestError]:
    with pytest.raises(ManifestErrors) as info:
        load_manifests(folder, environ if environ is not None else {})
    return info.value.errors


def where(errors: list[ManifestError]) -> set[tuple[str, str]]:
    return {(e.file.name, e.path) for e in errors}


@pytest.fixture
def payments_folder(tmp_path: Path) -> Path:
    write(tmp_path, "payments.toml", PAYMENTS)
    (tmp_path / "work").mkdir()
    return tmp_path


# ------------------------------------------------------------------------------ good folders


def test_a_good_manifest_becomes_a_server_spec(payments_folder: Path) -> None:
    [spec] = load_manifests(payments_folder, ENV)

    assert spec.name == "payments"
    assert spec.source == payments_folder / "payments.toml"
    assert spec.command == "/usr/bin/env"
    assert spec.args == ("server.py", "--token=s3cr3t-value")
    assert spec.env == {"API_TOKEN": "s3cr3t-value", "LEDGER": "ledger.jsonl"}
    assert spec.cwd == payments_folder / "work"
    assert spec.timeout == 1.5
    assert spec.tool_prefix == "pay_"


def test_each_tool_inherits_defaults_and_overrides_them(payments_folder: Path) -> None:
    [spec] = load_manifests(payments_folder, ENV)

    assert spec.defaults.retention == 7200.0
    assert spec.defaults.side_effects is None  # "auto" when unsaid

    invoice = spec.policy_for("create_invoice")
    assert invoice.side_effects is True
    assert invoice.retention == 7 * 86400.0
    assert invoice.wait == 10.0 and invoice.in_flight == "reject"  # inherited
    assert invoice.fingerprint_exclude == ("trace_id",)
    assert invoice.forward_key == ForwardKey("argument", "idempotency_key")
    assert invoice.redact == ("password", "card_number")  # lists add to the defaults'
    assert invoice.cost == pytest.approx(0.30)

    consume = spec.policy_for("consume")
    assert consume.key_from == "message_id"
    assert consume.forward_key == ForwardKey("meta", "idem")  # inherited from defaults
    assert consume.side_effects is None

    assert spec.policy_for("list_invoices").side_effects is False
    assert spec.policy_for("not_in_manifest") == spec.defaults


def test_a_json_manifest_loads_like_its_toml_twin(payments_folder: Path, tmp_path: Path) -> None:
    data = tomllib.loads(PAYMENTS)
    data["$schema"] = "https://example.invalid/manifest.json"
    twin = tmp_path / "json"
    write(twin, "payments.json", json.dumps(data))
    (twin / "work").mkdir()

    [from_toml] = load_manifests(payments_folder, ENV)
    [from_json] = load_manifests(twin, ENV)

    assert from_json.source.suffix == ".json"
    assert from_json.cwd == twin / "work"
    assert _comparable(from_json) == _comparable(from_toml)


def _comparable(spec: ServerSpec) -> dict[str, object]:
    return {k: getattr(spec, k) for k in ServerSpec.__dataclass_fields__ if k not in ("source", "cwd")}


def test_cwd_defaults_to_the_manifest_folder_and_python_means_this_interpreter(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", '[server]\nname = "a"\ncommand = "python"\n')
    write(tmp_path, "b.toml", '[server]\nname = "b"\ncommand = "python3"\ncwd = ".."\n')
    write(tmp_path, "c.toml", '[server]\nname = "c"\ncommand = "python3.11"\ncwd = "/"\n')

    a, b, c = load_manifests(tmp_path, {})

    assert (a.cwd, b.cwd, c.cwd) == (tmp_path, tmp_path.parent, Path("/"))
    assert a.command == b.command == sys.executable
    assert c.command == "python3.11"
    assert a.timeout == 30.0 and a.transport == "stdio" and a.expose == "all"


def test_files_load_sorted_by_name_and_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "zeta.toml", stdio("zeta"))
    write(tmp_path, "alpha.json", json.dumps({"server": {"name": "alpha", "command": "run"}}))
    write(tmp_path, "notes.md", "not a manifest")
    write(tmp_path, "ledger.jsonl", "{}\n")

    assert [s.name for s in load_manifests(tmp_path, {})] == ["alpha", "zeta"]


def test_an_http_server_expands_its_url_and_headers(tmp_path: Path) -> None:
    write(
        tmp_path,
        "remote.toml",
        '[server]\nname = "remote"\ntransport = "http"\nurl = "http://${HOST:-127.0.0.1}:9000/mcp"\n'
        'headers = { Authorization = "Bearer ${BEARER}" }\nexpose = "listed"\n'
        '[tools.charge]\nforward_key = "header:Idempotency-Key"\n',
    )

    [spec] = load_manifests(tmp_path, {"BEARER": "tok"})

    assert spec.url == "http://127.0.0.1:9000/mcp"
    assert spec.headers == {"Authorization": "Bearer tok"}
    assert spec.cwd is None and spec.command is None
    assert spec.policy_for("charge").forward_key == ForwardKey("header", "Idempotency-Key")
    assert spec.exposes("charge") and not spec.exposes("refund")


def test_the_repo_manifests_load_without_any_environment() -> None:
    specs = load_manifests(REPO / "tool_manifests", {})

    [payments] = [s for s in specs if s.name == "payments"]
    assert payments.command == sys.executable
    assert payments.cwd is not None and (payments.cwd / payments.args[0]).resolve() == (
        REPO / "examples" / "payments_server.py"
    )
    assert payments.env == {"PAYMENTS_LEDGER": "payments-ledger.jsonl"}
    invoice = payments.policy_for("create_invoice")
    assert (invoice.side_effects, invoice.fingerprint_exclude, invoice.redact) == (
        True,
        ("trace_id",),
        ("card_number",),
    )
    assert invoice.cost == pytest.approx(0.30)
    assert payments.policy_for("get_invoice").side_effects is False
    assert payments.policy_for("list_invoices").side_effects is False
    assert payments.policy_for("send_email").side_effects is True
    assert payments.defaults.retention == 86400.0 and payments.timeout == 30.0


# ------------------------------------------------------------------------------- bad inputs


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "broken.toml", '[server]\nname = "x"\ncommand = \n')

    [error] = load_errors(tmp_path)

    assert (error.file.name, error.path) == ("broken.toml", "")
    assert "invalid TOML" in error.message and "line 3" in error.message
    assert str(error).startswith("broken.toml: invalid TOML")


def test_a_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "broken.json", '{"server": {\n"name": "x",\n}}')

    [error] = load_errors(tmp_path)

    assert error.file.name == "broken.json" and "line 3" in error.message


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ("colour = 1", "server.colour", "unknown key"),
        ("[defaults]\nretentoin = '1h'", "defaults.retentoin", "unknown key"),
        ("[tools.t]\nside_effect = true", "tools.t.side_effect", "unknown key"),
        ("[defaults]\nkey_from = 'id'", "defaults.key_from", "unknown key"),
        ("[defaults]\nstore_errors = 'yes'", "defaults.store_errors", "expected boolean, got string"),
        ("args = 'server.py'", "server.args", "expected array"),
        ("[tools.t]\ncost = -1", "tools.t.cost", ">= 0"),
        ("[tools.t]\ncost = true", "tools.t.cost", "expected number"),
        ("[tools.t]\nside_effects = 'maybe'", "tools.t.side_effects", "expected one of"),
        ("[tools.t]\nforward_key = 'body:x'", "tools.t.forward_key", '"argument:NAME"'),
        ("expose = 'some'", "server.expose", "expected one of"),
        ("transport = 'ws'", "server.transport", "expected one of"),
        ("url = 'http://x/mcp'", "server.url", 'only with transport "http"'),
    ],
)
def test_a_schema_violation_names_the_path(tmp_path: Path, extra: str, path: str, fragment: str) -> None:
    write(tmp_path, "svc.toml", stdio("svc", extra))

    [error] = load_errors(tmp_path)

    assert (error.file.name, error.path) == ("svc.toml", path)
    assert fragment in error.message
    assert str(error) == f"svc.toml: {path}: {error.message}"


def test_a_bad_server_name_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "svc.toml", '[server]\nname = "Pay Ments"\ncommand = "run"\n')

    [error] = load_errors(tmp_path)

    assert error.path == "server.name" and "lowercase" in error.message


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("timeout = '30'", "server.timeout"),
        ("timeout = '1.5s'", "server.timeout"),
        ("timeout = '0s'", "server.timeout"),
        ("[defaults]\nretention = '24 h'", "defaults.retention"),
        ("[tools.create_invoice]\nretention = '3w'", "tools.create_invoice.retention"),
        ("[tools.create_invoice]\nwait = 30", "tools.create_invoice.wait"),
    ],
)
def test_a_bad_duration_names_its_field(tmp_path: Path, extra: str, path: str) -> None:
    write(tmp_path, "payments.toml", stdio("payments", extra))

    [error] = load_errors(tmp_path)

    assert (error.file.name, error.path) == ("payments.toml", path)


def test_an_unset_variable_names_the_field_and_the_variable(tmp_path: Path) -> None:
    write(tmp_path, "payments.toml", stdio("payments", 'env = { API_TOKEN = "${PAYMENTS_TOKEN}" }'))

    [error] = load_errors(tmp_path, {"OTHER": "x"})

    assert str(error) == "payments.toml: server.env.API_TOKEN: environment variable PAYMENTS_TOKEN is not set"


def test_the_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "payments.toml", stdio("payments", 'env = { T = "${IDEM_TEST_TOKEN}" }'))
    monkeypatch.setenv("IDEM_TEST_TOKEN", "abc")
    assert load_manifests(tmp_path)[0].env == {"T": "abc"}

    monkeypatch.delenv("IDEM_TEST_TOKEN")
    with pytest.raises(ManifestErrors, match="IDEM_TEST_TOKEN is not set"):
        load_manifests(tmp_path)


def test_a_stdio_server_needs_a_command_and_an_http_server_a_url(tmp_path: Path) -> None:
    write(tmp_path, "local.toml", '[server]\nname = "local"\n')
    write(tmp_path, "remote.toml", '[server]\nname = "remote"\ntransport = "http"\ncommand = "x"\n')

    errors = load_errors(tmp_path)

    assert where(errors) == {
        ("local.toml", "server.command"),
        ("remote.toml", "server.url"),
        ("remote.toml", "server.command"),
    }
    messages = {(e.file.name, e.path): e.message for e in errors}
    assert "stdio" in messages[("local.toml", "server.command")]
    assert "http" in messages[("remote.toml", "server.url")]


def test_a_header_forward_key_needs_http(tmp_path: Path) -> None:
    write(tmp_path, "svc.toml", stdio("svc", "[tools.charge]\nforward_key = 'header:Idempotency-Key'"))

    [error] = load_errors(tmp_path)

    assert (error.path, error.file.name) == ("tools.charge.forward_key", "svc.toml")
    assert "http" in error.message


def test_key_from_on_a_read_only_tool_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "svc.toml", stdio("svc", "[tools.t]\nkey_from = 'id'\nside_effects = false"))

    [error] = load_errors(tmp_path)

    assert error.path == "tools.t.key_from"


def test_key_from_with_a_forward_key_is_allowed(tmp_path: Path) -> None:
    write(tmp_path, "svc.toml", stdio("svc", "[tools.t]\nkey_from = 'id'\nforward_key = 'meta:k'"))

    [spec] = load_manifests(tmp_path, {})

    assert spec.policy_for("t").key_from == "id"
    assert spec.policy_for("t").forward_key == ForwardKey("meta", "k")


def test_a_missing_cwd_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "svc.toml", stdio("svc", "cwd = 'nowhere'"))

    [error] = load_errors(tmp_path)

    assert error.path == "server.cwd"


def test_a_server_name_used_twice_names_both_files(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", stdio("payments"))
    write(tmp_path, "b.json", json.dumps({"server": {"name": "payments", "command": "run"}}))

    [error] = load_errors(tmp_path)

    assert (error.file.name, error.path) == ("b.json", "server.name")
    assert "a.toml" in error.message


def test_tools_named_by_two_servers_clash_after_prefixing(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", stdio("a", "tool_prefix = 'x_'\n[tools.charge]\ncost = 1"))
    write(tmp_path, "b.toml", stdio("b", "[tools.x_charge]\ncost = 1\n[tools.charge]\ncost = 1"))

    [error] = load_errors(tmp_path)

    assert (error.file.name, error.path) == ("b.toml", "tools.x_charge")
    assert "'x_charge'" in error.message and "a.toml" in error.message


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_missing_or_empty_folder_is_an_error(tmp_path: Path, folder: str) -> None:
    (tmp_path / "empty").mkdir()

    [error] = load_errors(tmp_path / folder)

    assert error.file.name == folder


def test_every_error_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", "[server\n")
    write(
        tmp_path,
        "b.toml",
        stdio(
            "b", "colour = 'red'\ntimeout = 'soon'\nenv = { K = '${UNSET_B}' }\n[tools.t]\nretention = 'x'"
        ),
    )
    write(tmp_path, "c.json", json.dumps({"server": {"name": "c", "transport": "http"}}))
    write(tmp_path, "d.toml", stdio("b"))

    with pytest.raises(ManifestErrors) as info:
        load_manifests(tmp_path, {})

    assert where(info.value.errors) == {
        ("a.toml", ""),
        ("b.toml", "server.colour"),
        ("b.toml", "server.timeout"),
        ("b.toml", "server.env.K"),
        ("b.toml", "tools.t.retention"),
        ("c.json", "server.url"),
        ("d.toml", "server.name"),
    }
    assert str(info.value).splitlines() == [str(e) for e in info.value.errors]


def test_no_message_contains_a_secret(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    write(
        tmp_path,
        "svc.toml",
        stdio(
            "svc",
            f'args = ["--key={secret}", 7]\nenv = {{ A = "${{TOKEN}}", B = "${{MISSING}}", C = 5 }}\n'
            f'headers = {{ Authorization = "{secret}" }}\nurl = "{secret}"\n[tools.t]\nredact = "{secret}"',
        ),
    )
    write(
        tmp_path,
        "web.toml",
        f'[server]\nname = "web"\ntransport = "http"\nurl = "ftp://{secret}"\n'
        f'headers = {{ X = "${{TOKEN}}${{NOPE}}", Y = 1 }}\ncommand = "{secret}"\n',
    )

    with pytest.raises(ManifestErrors) as info:
        load_manifests(tmp_path, {"TOKEN": secret})

    text = str(info.value)
    assert len(info.value.errors) >= 6
    assert "MISSING" in text and "NOPE" in text
    assert secret not in text
    assert all(secret not in repr(e) for e in info.value.errors)


# -------------------------------------------------------------------------- exposed names


def _spec(
    name: str, prefix: str = "", expose: Literal["all", "listed"] = "all", tools: tuple[str, ...] = ()
) -> ServerSpec:
    return ServerSpec(
        name=name,
        source=Path(f"/m/{name}.toml"),
        command="run",
        tool_prefix=prefix,
        expose=expose,
        tools={t: ToolPolicy() for t in tools},
    )


def test_exposed_names_clash_across_servers() -> None:
    a, b = _spec("a"), _spec("b")

    [error] = check_exposed_names([a, b], {"a": ["charge", "refund"], "b": ["charge", "status"]})

    assert error.file.name == "b.toml" and error.path == "server.tool_prefix"
    assert "'charge'" in error.message and "a.toml" in error.message


def test_a_prefix_or_a_listed_exposure_avoids_a_clash() -> None:
    offered = {"a": ["charge"], "b": ["charge"], "c": ["charge", "status"]}
    prefixed = [_spec("a"), _spec("b", prefix="b_")]
    listed = [_spec("a"), _spec("c", expose="listed", tools=("status",))]

    assert check_exposed_names(prefixed, offered) == []
    assert check_exposed_names(listed, offered) == []


def test_a_prefix_can_create_a_clash() -> None:
    specs = [_spec("a"), _spec("b", prefix="x_", tools=("charge",))]

    [error] = check_exposed_names(specs, {"a": ["x_charge"], "b": ["charge"]})

    assert (error.file.name, error.path) == ("b.toml", "tools.charge")


# ------------------------------------------------------------------------------ small parts


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("0s", 0.0), ("30s", 30.0), ("5m", 300.0), ("24h", 86400.0), ("7d", 604800.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "1.5s", "-1s", "1 s", "1w", "s", "1S"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_expand_env_forms() -> None:
    env = {"A": "1", "EMPTY": ""}

    assert expand_env("${A}-${B:-two}-${EMPTY:-three}-${EMPTY}", env) == "1-two-three-"
    assert expand_env("$${A} $A ${A:-}", env) == "${A} $A 1"
    with pytest.raises(KeyError):
        expand_env("${B}", env)
    with pytest.raises(ValueError, match="malformed"):
        expand_env("${not ok}", env)
