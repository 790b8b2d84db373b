"""``transport = "openapi"`` manifests: what loads, and every mistake named by file and path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.manifests import ForwardKey, ManifestErrors, load_manifests

ENV = {"INVOICES_TOKEN": "tok-1234567890"}
GOOD = """
[server]
name = "invoices"
transport = "openapi"
spec = "api/openapi.yaml"
base_url = "https://api.example.com/v1"
headers = { Authorization = "Bearer ${INVOICES_TOKEN}" }
operations = ["createInvoice", "listInvoices"]
timeout = "10s"
"""


def folder_with(tmp: Path, text: str) -> Path:
    folder = tmp / "manifests"
    (folder / "api").mkdir(parents=True, exist_ok=True)
    (folder / "api" / "openapi.yaml").write_text("openapi: 3.1.0\n")
    (folder / "invoices.toml").write_text(text)
    return folder


def errors_of(tmp: Path, text: str) -> list[str]:
    with pytest.raises(ManifestErrors) as raised:
        load_manifests(folder_with(tmp, text), ENV)
    return [str(e) for e in raised.value.errors]


def test_an_openapi_manifest_loads_with_the_key_forwarded_as_a_header(tmp_path: Path) -> None:
    (spec,) = load_manifests(folder_with(tmp_path, GOOD), ENV)
    assert spec.transport == "openapi"
    assert spec.openapi_spec == str((tmp_path / "manifests" / "api" / "openapi.yaml").resolve())
    assert spec.base_url == "https://api.example.com/v1"
    assert spec.operations == ("createInvoice", "listInvoices")
    assert spec.headers == {"Authorization": "Bearer tok-1234567890"}
    assert spec.defaults.forward_key == ForwardKey("header", "Idempotency-Key")
    assert spec.timeout == 10.0


def test_key_header_renames_the_forwarded_header_and_a_tool_may_name_its_own(tmp_path: Path) -> None:
    text = (
        GOOD
        + 'key_header = "X-Idempotency-Key"\n\n[tools.createInvoice]\nforward_key = "header:Request-Id"\n'
    )
    (spec,) = load_manifests(folder_with(tmp_path, text), ENV)
    assert spec.key_header == "X-Idempotency-Key"
    assert spec.defaults.forward_key == ForwardKey("header", "X-Idempotency-Key")
    assert spec.policy_for("createInvoice").forward_key == ForwardKey("header", "Request-Id")


def test_a_url_spec_is_kept_as_a_url(tmp_path: Path) -> None:
    text = GOOD.replace('spec = "api/openapi.yaml"', 'spec = "https://api.example.com/openapi.json"')
    (spec,) = load_manifests(folder_with(tmp_path, text), ENV)
    assert spec.openapi_spec == "https://api.example.com/openapi.json"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (('spec = "api/openapi.yaml"\n', ""), 'invoices.toml: server.spec: required (transport "openapi")'),
        (
            ('base_url = "https://api.example.com/v1"\n', ""),
            'server.base_url: required (transport "openapi")',
        ),
        (('spec = "api/openapi.yaml"', 'spec = "nowhere.yaml"'), "server.spec: no such file"),
        (('timeout = "10s"', 'command = "python"'), 'server.command: valid only with transport "stdio"'),
        (('timeout = "10s"', 'url = "http://x/mcp"'), 'server.url: valid only with transport "http"'),
        (('"https://api.example.com/v1"', '"https://api.example.com/v1?k=1"'), "server.base_url: an http://"),
        (('timeout = "10s"', 'key_header = "Bad Header"'), "server.key_header: an HTTP header name"),
        (
            ('timeout = "10s"', 'timeout = "10s"\n[defaults]\nforward_key = "meta:idem"'),
            'defaults.forward_key: transport "openapi" takes only a "header:NAME" forward_key',
        ),
    ],
)
def test_a_mistake_in_an_openapi_manifest_is_named(
    tmp_path: Path, change: tuple[str, str], error: str
) -> None:
    assert change[0] in GOOD
    errors = errors_of(tmp_path, GOOD.replace(*change))
    assert any(error in e for e in errors), errors


@pytest.mark.parametrize("key", ["spec", "base_url", "operations", "key_header"])
def test_openapi_keys_are_refused_for_an_mcp_server(tmp_path: Path, key: str) -> None:
    value = '["a"]' if key == "operations" else '"https://x.example"' if key == "base_url" else '"X-Key"'
    text = f'[server]\nname = "pay"\ncommand = "python"\n{key} = {value}\n'
    assert f'invoices.toml: server.{key}: valid only with transport "openapi"' in errors_of(tmp_path, text)


def test_headers_are_refused_for_a_stdio_server(tmp_path: Path) -> None:
    text = '[server]\nname = "pay"\ncommand = "python"\nheaders = { A = "b" }\n'
    assert errors_of(tmp_path, text) == [
        'invoices.toml: server.headers: valid only with transport "http" or "openapi"'
    ]


def test_without_the_openapi_extra_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openapi_spec_validator", None)  # as if not installed
    errors = errors_of(tmp_path, GOOD)
    assert errors == [
        'invoices.toml: server.transport: transport "openapi" needs the [openapi] extra: '
        "pip install 'mcp-idempotency-gateway[openapi]'"
    ]
